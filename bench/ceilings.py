"""The raw ceilings of the ingest phase: the same messages written with the store client's
plain batched writes (no read, no merge), and on Firestore one write per message, the old
backend's path. bench/store_ingest.py's writers, in the order history sync delivers."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import store_ingest  # _sqlite_raw, plain_docs, make_messages
from rig import log


def raw_ceiling(args, count: int, threads: int, emulator_host: Optional[str]) -> tuple[float, Optional[float]]:
    """The same number of messages over as many chats, written with the store client's
    plain batched writes (no read, no merge; documents encoded before the clock starts);
    and on Firestore the rate of one write per message (None on SQLite).

    In the order history sync delivers them: chat by chat (a HistorySync chunk holds one
    conversation's newest messages), which is what the daemon wrote. store_ingest.py's
    order (message n in chat n % chats) puts every message of a 500-batch in a different
    B-tree leaf: on SQLite that is ~10x slower and would make a poor ceiling; it is
    measured too (stderr) to show the difference."""
    log(f"ingest: raw ceiling: {count} messages over {threads} chats, plain batches of {store_ingest.BATCH}")
    messages = store_ingest.make_messages(count, threads)
    docs = store_ingest.plain_docs(messages)
    chat_major = sorted(docs, key=lambda d: (d[0], d[2]["tsClientMs"]))
    one = None
    if args.store == "sqlite":
        from wasync.runtime.store.sqlite_codec import encode

        with tempfile.TemporaryDirectory(prefix="wasync-bench-raw-") as tmp:
            rows = [(t, i, "bench", d["tsClientMs"], encode(d)) for t, i, d in chat_major]
            raw = store_ingest._sqlite_raw(Path(tmp) / "raw.db", rows, store_ingest.BATCH)
            if args.raw_interleaved:
                rows = [(t, i, "bench", d["tsClientMs"], encode(d)) for t, i, d in docs]
                mixed = store_ingest._sqlite_raw(Path(tmp) / "mixed.db", rows, store_ingest.BATCH)
                log(f"ingest: raw, store_ingest.py's interleaved order (every message of a batch in "
                    f"another chat): {mixed:.0f} msgs/s")
    else:
        raw, one = firestore_raw(chat_major, emulator_host)
    log(f"ingest: raw ceiling (chat by chat) {raw:.0f} msgs/s")
    return raw, one


def firestore_raw(docs: list[tuple[str, str, dict]], emulator_host: str) -> tuple[float, float]:
    """As bench/store_ingest.py's Firestore raw: WriteBatch of 500 plain sets (after the
    same warm-up of the emulator JVM); and one plain write per message, on a sample."""
    from google.cloud import firestore

    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator_host
    stamp = time.time_ns()
    store_ingest.warm_emulator(docs)
    db = firestore.Client(project=f"bench-raw-{stamp}")
    refs = [db.collection("threads").document(t).collection("messages").document(i) for t, i, _ in docs]
    start = time.perf_counter()
    for i in range(0, len(docs), store_ingest.BATCH):
        batch = db.batch()
        for ref, (_, _, doc) in zip(refs[i:i + store_ingest.BATCH], docs[i:i + store_ingest.BATCH]):
            batch.set(ref, doc)
        batch.commit()
    raw = store_ingest.rate(len(docs), time.perf_counter() - start)
    # The old backend's path, one write per message: slow, so a sample gives its rate.
    sample = docs[:2_000]
    one_db = firestore.Client(project=f"bench-one-{stamp}")
    start = time.perf_counter()
    for t, mid, doc in sample:
        one_db.collection("threads").document(t).collection("messages").document(mid).set(doc)
    one = store_ingest.rate(len(sample), time.perf_counter() - start)
    log(f"ingest: one write per message (the old backend's path, {len(sample)} messages): {one:.0f} msgs/s")
    return raw, one
