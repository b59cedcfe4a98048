"""Pipeline benchmark: simulated WhatsApp -> `wasync run` -> store, as real processes.

Three figures, measured in one run, each phase with its own simulator (`wasync sim`) and
daemon (`wasync run`, embedded SQLite store unless `--store firestore`):

  ingest   history sync end to end. A world of accounts with a `generate` block and an
           initialSyncPerChat that sends all of it (default 10 x 20 chats x 500 = 100,000
           messages). Timed from the first admin API call that adds an account
           (POST /api/whatsapp/accounts) until the store holds every history message
           (counted in the store itself). Raw ceiling: the same number of messages
           over as many chats, written with the store client's plain batched writes
           (bench/store_ingest.py's functions) in the same run, chat by chat as history
           sync delivers them (see `raw_ceiling`). Target: ingest / raw >= 0.5 (SQLite),
           >= 0.8 (Firestore emulator).
  latency  realtime: 50 accounts x 2 msgs/s of simulator `traffic` for 30 s (speed 1),
           the accounts' traffic starts staggered over one inter-message interval so
           the 100 msgs/s arrive evenly rather than in bursts of 50. p99 of the daemon's
           own histograms wasync_event_to_spool_seconds (transport callback -> spool
           append) and wasync_event_to_store_seconds (spool append -> store flush done),
           taken as the difference of two /metrics scrapes around the traffic and
           *estimated from the buckets* by linear interpolation (Prometheus'
           histogram_quantile). Targets: spool p99 <= 5 ms, store p99 <= 1 s.
  hol      realtime behind a history burst: `--latency-accounts` live accounts at
           `--latency-rate` msgs/s while `--hol-big` other accounts (default 10) are added
           and ingest `--hol-history` history messages each (default 20,000). p99 of
           realtime event -> stored, from the store (createdAt - the simulator's message
           time) for the live messages, and the daemon's own spool -> store histogram
           over the burst. Target: <= 1 s.
  outage   the store unreachable for `--outage-seconds` (default 60; SQLite: the bench
           holds an exclusive lock on the store file) under the latency phase's traffic:
           RSS during the outage (flat: the backlog is not in memory), and the rate at
           which the outage's messages are stored once it is back, as a ratio of the
           ingest phase's rate. Target >= 0.5.
  instances  cold start when connects take turns per process, as neonize registers
           one client at a time (WASYNC_SIM_REGISTRATION_MS=`--registration-ms`, default
           200; against WhatsApp ~1,000): `--instances-accounts` (100) accounts on 1, 2 and
           4 instances sharing one data dir, seconds from `wasync run` until the simulator
           sees all connected.
  rss      daemon VmRSS (/proc/PID/status) with 0 accounts just after start and with
           500 small simulated accounts all connected and idle for a few seconds;
           (rss500 - rss0) / 500. Target <= 2 MiB per account. If the accounts stop
           connecting (nothing moves for `--stall` s) the phase fails: the RSS at that
           point is logged, the figure is n/a (null) and the exit status is 1.
           Then the cold start: SIGTERM, `wasync run` again on the same data, seconds
           until all 500 are connected. Target <= 15 s.

Accounts start paced by WASYNC_MAX_STARTS_PER_SECOND (default 5/s: 100 s for 500
accounts); the bench sets it to 100 (`--starts-per-second`) in every phase, so the
ingest clock measures the pipeline and not the start pacing.

Prints a table (figure, target, ratio); `--json` prints one JSON object with the keys
ingest_msgs_per_s, raw_msgs_per_s, one_by_one_msgs_per_s (Firestore), spool_p99_ms, store_p99_ms, hol_live_p99_ms,
hol_store_p99_ms, outage_drain_msgs_per_s, outage_rss_growth_mib, rss_mib_per_account,
cold_start_s, instances_cold_start_s (null
for a phase not run or failed) and nothing else on stdout. Progress goes to stderr. Exit
status 1 if a phase failed. The default run takes about 5 minutes on 2 cores.

Usage: python bench/pipeline.py [--only ingest|latency|hol|outage|rss|instances] [--quick] [--json]
       [--store sqlite|firestore] [--emulator HOST:PORT] [--ingest-accounts 10]
       [--ingest-chats 20] [--ingest-messages-per-chat 500] [--latency-accounts 50]
       [--latency-rate 2] [--latency-seconds 30] [--rss-accounts 500] [--keep]
       [--starts-per-second 100] [--stall 30] [--timeout 180]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))

import store_ingest  # noqa: E402  (the raw ceilings: _sqlite_raw, plain_docs, make_messages)
from daemonproc import DaemonProcess  # noqa: E402
from simproc import SimProcess  # noqa: E402

MiB = 1024 * 1024
SPOOL_METRIC = "wasync_event_to_spool_seconds"
STORE_METRIC = "wasync_event_to_store_seconds"
TARGETS = {"ingest_ratio": 0.5, "spool_p99_ms": 5.0, "store_p99_ms": 1000.0, "rss_mib_per_account": 2.0,
           "hol_live_p99_ms": 1000.0, "hol_store_p99_ms": 1000.0}
INGEST_RATIO = {"sqlite": 0.5, "firestore": 0.8}  # issue 16's targets, per store
# The admin API's rate limit (600 changes a minute) would refuse 500 adds in a row.
BENCH_ADMIN_RATE = 1_000_000


def log(*args) -> None:
    print("[pipeline]", *args, file=sys.stderr, flush=True)


def phone(i: int) -> str:
    return f"1999{i:07d}"


def account_id(i: int) -> str:
    return f"bench{i:04d}"


class PhaseTimeout(RuntimeError):
    pass


def poll(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05,
         progress: Optional[Callable[[float], None]] = None, progress_every_s: float = 2.0) -> Any:
    """Call `check` until it returns something truthy; `progress(elapsed)` now and then."""
    start = time.monotonic()
    last = start
    while True:
        result = check()
        if result:
            return result
        now = time.monotonic()
        if now - start > timeout_s:
            raise PhaseTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}")
        if progress and now - last >= progress_every_s:
            last = now
            progress(now - start)
        time.sleep(every_s)


# --- /proc ---------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def rss_bytes(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# --- histograms from /metrics --------------------------------------------------------


def scrape(daemon: DaemonProcess) -> dict[str, dict]:
    """Every histogram and counter of the daemon's /metrics: name -> {"buckets":
    [(le, cumulative)], "count", "sum"} for histograms, name -> {labels: value} otherwise."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = daemon.get("/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    text = body.decode() if isinstance(body, bytes) else str(body)
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            buckets, count, total = [], 0.0, 0.0
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
            out[family.name] = {"buckets": sorted(buckets), "count": count, "sum": total}
        else:
            out[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples
                                if not s.name.endswith("_created")}
    return out


def hist_delta(after: dict, before: dict) -> dict:
    old = dict(before["buckets"])
    return {"buckets": [(le, c - old.get(le, 0.0)) for le, c in after["buckets"]],
            "count": after["count"] - before["count"], "sum": after["sum"] - before["sum"]}


def quantile(q: float, hist: dict) -> tuple[Optional[float], str]:
    """histogram_quantile: linear interpolation inside the bucket that holds rank q*n
    (the first bucket starts at 0). Returns (seconds, note); the note says when the rank
    is in the +Inf bucket (then the value is only a lower bound)."""
    buckets = hist["buckets"]
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None, "no observations"
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le, f"above the top bucket ({prev_le:g} s): lower bound"
            if c == prev_c:
                return le, ""
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c), \
                f"bucket {prev_le:g}-{le:g} s"
        prev_le, prev_c = le, c
    return None, "no observations"


def _ms(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.3f} ms"


def hist_summary(hist: dict) -> str:
    parts = []
    prev = 0.0
    for le, c in hist["buckets"]:
        if c - prev:
            parts.append(f"<={le:g}s:{int(c - prev)}")
        prev = c
    mean = hist["sum"] / hist["count"] if hist["count"] else float("nan")
    return f"n={int(hist['count'])} mean={mean * 1000:.2f} ms  " + " ".join(parts)


# --- the store, read from the bench process ------------------------------------------


class StoreReader:
    """Counts messages in the daemon's store (SQLite file or Firestore emulator)."""

    def __init__(self, kind: str, data_dir: Path, project: Optional[str] = None):
        self.kind = kind
        self.data_dir = data_dir
        self.project = project
        self._conn: Optional[sqlite3.Connection] = None
        self._db = None

    def _sqlite(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.data_dir / "wasync.db", isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA query_only=1")
        return self._conn

    def _firestore(self):
        if self._db is None:
            from google.cloud import firestore

            self._db = firestore.Client(project=self.project)
        return self._db

    def messages(self, source: Optional[str] = None) -> int:
        if self.kind == "sqlite":
            if source is None:
                return self._sqlite().execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            return self._sqlite().execute("SELECT COUNT(*) FROM messages WHERE json_extract(doc, '$.syncSource') = ?",
                                          (source,)).fetchone()[0]
        from google.cloud import firestore

        query = self._firestore().collection_group("messages")
        if source is not None:
            query = query.where(filter=firestore.FieldFilter("syncSource", "==", source))
        return int(query.count().get()[0][0].value)

    def live_latencies_ms(self) -> list[float]:
        """SQLite only: createdAt (flush start, store time) - tsClientMs (the simulator's
        clock when it made the message) of every realtime message: an end-to-end
        cross-check that includes the simulator -> daemon hop the histograms miss."""
        if self.kind != "sqlite":
            return []
        rows = self._sqlite().execute(
            "SELECT json_extract(doc, '$.createdAt.\"$ts\"') - json_extract(doc, '$.tsClientMs') FROM messages "
            "WHERE json_extract(doc, '$.syncSource') = 'realtime'").fetchall()
        return [float(r[0]) for r in rows if r[0] is not None]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._db is not None:
            self._db.close()


def spool_depth(data_dir: Path) -> int:
    """Exact, read from the spool files (/diag's figure is refreshed only every 2 s)."""
    return sum(_count(path) for path in (data_dir / "spool").glob("*.db"))


def _count(path: Path) -> int:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()


# --- one simulator + one daemon ------------------------------------------------------


class Rig:
    """A simulator with `world` and a daemon against it, in a fresh directory; both are
    stopped on exit whatever happened (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, world: dict, args, emulator_host: Optional[str]):
        self.name = name
        self.world = world
        self.args = args
        self.emulator_host = emulator_host
        self.workdir = Path(tempfile.mkdtemp(prefix=f"wasync-bench-{name}-"))
        self.project = f"bench-{name}-{time.time_ns()}" if args.store == "firestore" else None
        self.sim: Optional[SimProcess] = None
        self.daemon: Optional[DaemonProcess] = None
        self.reader: Optional[StoreReader] = None
        self.failed = False

    def __enter__(self) -> "Rig":
        try:
            self.start()
        except BaseException:
            self.failed = True
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.failed = self.failed or exc_type is not None
        self.close()

    def start(self) -> None:
        accounts = len(self.world["accounts"])
        log(f"{self.name}: starting wasync sim ({accounts} accounts) in {self.workdir}")
        started = time.monotonic()
        self.sim = SimProcess(self.world, self.workdir / "sim", speed=1.0).start(timeout_s=180)
        log(f"{self.name}: simulator up on port {self.sim.port} after {time.monotonic() - started:.1f} s")
        env = {"WASYNC_TRANSPORT": self.sim.address,
               "WASYNC_MAX_STARTS_PER_SECOND": str(self.args.starts_per_second),
               "WASYNC_ADMIN_RATE_PER_MINUTE": str(BENCH_ADMIN_RATE),
               "LOG_LEVEL": self.args.daemon_log_level}
        if self.args.store == "firestore":
            env.update(WASYNC_STORE="firestore", FIRESTORE_EMULATOR_HOST=self.emulator_host,
                       GOOGLE_CLOUD_PROJECT=self.project)
        self.env = env
        self.daemon = DaemonProcess(self.workdir / "daemon", env).start(timeout_s=60)
        self.data_dir = self.workdir / "daemon" / "data"
        self.reader = StoreReader(self.args.store, self.data_dir, self.project)
        log(f"{self.name}: wasync run up (pid {self.daemon.proc.pid}, port {self.daemon.port}, "
            f"store {self.args.store}, WASYNC_MAX_STARTS_PER_SECOND={self.args.starts_per_second})")

    def restart(self) -> float:
        """Stop the daemon (SIGTERM) and run `wasync run` again on the same data; returns
        the moment the new process was started (time.monotonic)."""
        code = self.daemon.stop(timeout_s=60)
        if code != 0:
            raise RuntimeError(f"the daemon exited {code} on SIGTERM")
        started = time.monotonic()
        self.daemon = DaemonProcess(self.workdir / "daemon", self.env).start(timeout_s=60)
        return started

    def close(self) -> None:
        if self.reader:
            try:
                self.reader.close()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                log(f"{self.name}: closing the store reader: {exc}")
        if self.daemon and self.daemon.proc and self.daemon.proc.poll() is None:
            log(f"{self.name}: stopping the daemon (SIGTERM)")
            try:
                code = self.daemon.stop(timeout_s=60)
                if code != 0:
                    log(f"{self.name}: the daemon exited {code}; log tail:\n{self.daemon.tail(2000)}")
            except AssertionError:
                log(f"{self.name}: the daemon ignored SIGTERM for 60 s and was killed")
                self.failed = True
            except BaseException:
                self.daemon.kill()
                raise
        if self.sim and self.sim.proc and self.sim.proc.poll() is None:
            try:
                self.sim.stop()
            except BaseException:
                if self.sim.proc.poll() is None:
                    self.sim.proc.kill()
                raise
        if self.failed or self.args.keep:
            log(f"{self.name}: logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- helpers ------------------------------------------------------------------

    def add_accounts(self, phones: list[str], workers: int = 8, first: int = 0) -> float:
        """POST /api/whatsapp/accounts for each phone (account ids from number `first` on);
        returns the seconds it took."""
        started = time.monotonic()
        done = [0]

        def add(i: int) -> None:
            status, body = self.daemon.request("POST", "/api/whatsapp/accounts",
                                               {"accountId": account_id(first + i), "phone": phones[i]})
            if status != 201:
                raise RuntimeError(f"adding {account_id(first + i)}: HTTP {status} {body}")
            done[0] += 1
            if len(phones) >= 100 and done[0] % 100 == 0:
                log(f"{self.name}: {done[0]}/{len(phones)} accounts added")

        with ThreadPoolExecutor(max_workers=min(workers, len(phones))) as pool:
            list(pool.map(add, range(len(phones))))
        return time.monotonic() - started

    def connected(self) -> int:
        status, body = self.daemon.get("/api/whatsapp/accounts")
        if status != 200:
            return 0
        return sum(1 for a in body["accounts"] if a.get("connected"))

    def cpu(self) -> tuple[float, float]:
        return cpu_seconds(self.daemon.proc.pid), cpu_seconds(self.sim.proc.pid)


# --- phase 1: history ingest ---------------------------------------------------------


def ingest_world(args) -> tuple[dict, int]:
    per_chat = min(args.ingest_sync_per_chat, args.ingest_messages_per_chat)
    world = {"seed": 7, "accounts": [
        {"phone": phone(i), "pushName": f"Bench {i}", "paired": True,
         "initialSyncPerChat": args.ingest_sync_per_chat,
         "generate": {"chats": args.ingest_chats, "messagesPerChat": args.ingest_messages_per_chat}}
        for i in range(args.ingest_accounts)]}
    return world, args.ingest_accounts * args.ingest_chats * per_chat


def phase_ingest(args, emulator_host: Optional[str]) -> dict:
    world, expected = ingest_world(args)
    log(f"ingest: {args.ingest_accounts} accounts x {args.ingest_chats} chats x "
        f"{min(args.ingest_sync_per_chat, args.ingest_messages_per_chat)} history messages = {expected}")
    with Rig("ingest", world, args, emulator_host) as rig:
        phones = [a["phone"] for a in world["accounts"]]
        before = scrape(rig.daemon)
        cpu0 = rig.cpu()
        t0 = time.monotonic()
        added_s = rig.add_accounts(phones)
        log(f"ingest: {len(phones)} accounts added in {added_s:.2f} s; waiting for {expected} messages in the store")
        first: list[float] = []
        last_count = [0, t0]

        def stored_now() -> int:
            """SQLite: counted in the store. Firestore: a count on the emulator reads every
            document (seconds at 100,000, and emulator CPU taken from the writes measured),
            so the daemon's own account is used: messages handed to the store, while any
            spool row is left, minus one; with none left, every one was confirmed written
            (rows leave the spool only then). The count is checked once at the end."""
            if args.store == "sqlite":
                return rig.reader.messages()
            handed = sum(v for labels, v in scrape(rig.daemon)["wasync_messages_ingested"].items()
                         if ("source", "history_sync") in labels)
            return int(handed) if spool_depth(rig.data_dir) == 0 else max(0, int(handed) - 1)

        def check() -> bool:
            n = stored_now()
            now = time.monotonic()
            if n and not first:
                first.append(now - t0)
            if n != last_count[0]:
                last_count[:] = [n, now]
            elif now - last_count[1] > args.stall:
                raise PhaseStalled(f"no progress for {args.stall:.0f} s at {n}/{expected} messages stored, "
                                   f"spool depth {spool_depth(rig.data_dir)}")
            return n >= expected

        def progress(elapsed: float) -> None:
            n = last_count[0]
            log(f"ingest: {n}/{expected} stored after {elapsed:.1f} s ({n / elapsed:.0f} msgs/s so far), "
                f"spool depth {spool_depth(rig.data_dir)}")

        poll(check, args.timeout, f"{expected} messages in the store",
             every_s=0.05, progress=progress)
        elapsed = time.monotonic() - t0
        cpu1 = rig.cpu()
        ours = expected / elapsed
        stored = rig.reader.messages()
        if stored < expected:
            raise RuntimeError(f"the store holds {stored} of the {expected} messages the daemon said it wrote")
        depth = poll(lambda: spool_depth(rig.data_dir) == 0 or None, 30, "an empty spool", every_s=0.1)
        after = scrape(rig.daemon)
        flush = hist_delta(after["wasync_store_flush_seconds"], before["wasync_store_flush_seconds"])
        batch = hist_delta(after["wasync_store_flush_batch_size"], before["wasync_store_flush_batch_size"])
        log(f"ingest: all {expected} history messages stored {elapsed:.2f} s after the first add "
            f"({ours:.0f} msgs/s); first message stored at {first[0] if first else float('nan'):.2f} s; "
            f"store now holds {stored}; spool empty: {bool(depth)}")
        log(f"ingest: CPU during ingest: daemon {cpu1[0] - cpu0[0]:.1f} s, simulator {cpu1[1] - cpu0[1]:.1f} s "
            f"over {elapsed:.1f} s wall ({os.cpu_count()} CPUs)")
        if flush["count"]:
            log(f"ingest: {int(flush['count'])} store flushes, {flush['sum']:.2f} s inside the store "
                f"({flush['sum'] / elapsed * 100:.0f}% of the wall time), mean batch "
                f"{batch['sum'] / max(1, batch['count']):.0f} ops")
        result = {"ingest_msgs_per_s": ours, "messages": expected, "seconds": elapsed,
                  "daemon_cpu_s": cpu1[0] - cpu0[0], "sim_cpu_s": cpu1[1] - cpu0[1],
                  "store_flush_s": flush["sum"]}
    raw, one = raw_ceiling(args, expected, args.ingest_accounts * args.ingest_chats, emulator_host)
    result["raw_msgs_per_s"], result["ratio"] = raw, result["ingest_msgs_per_s"] / raw
    if one is not None:
        result["one_by_one_msgs_per_s"] = one
    return result


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
    warm = firestore.Client(project=f"bench-warm-{stamp}")
    for i in range(0, min(len(docs), 5_000), store_ingest.BATCH):
        batch = warm.batch()
        for t, mid, doc in docs[i:i + store_ingest.BATCH]:
            batch.set(warm.collection("threads").document(t).collection("messages").document(mid), doc)
        batch.commit()
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


# --- phase 2: realtime latency -------------------------------------------------------


def small_world(accounts: int, chats: int, per_chat: int) -> dict:
    return {"seed": 11, "accounts": [
        {"phone": phone(i), "paired": True, "initialSyncPerChat": per_chat,
         "generate": {"chats": chats, "messagesPerChat": per_chat}} for i in range(accounts)]}


class PhaseStalled(PhaseTimeout):
    pass


def settle(rig: Rig, accounts: int, history: int, timeout_s: float, stall_s: float) -> None:
    """Every account connected, its history stored, the spool empty. Raises PhaseStalled
    when nothing moved for `stall_s` (and PhaseTimeout after `timeout_s`)."""
    state: dict[str, int] = {}
    moved: list[Any] = [time.monotonic(), None]

    def ready() -> bool:
        state.update(connected=rig.connected(), stored=rig.reader.messages(), depth=spool_depth(rig.data_dir))
        key = tuple(state.values())
        if key != moved[1]:
            moved[:] = [time.monotonic(), key]
        elif time.monotonic() - moved[0] > stall_s:
            raise PhaseStalled(f"no progress for {stall_s:.0f} s: {state['connected']}/{accounts} accounts "
                               f"connected, {state['stored']}/{history} history messages stored, "
                               f"spool depth {state['depth']}")
        return state["connected"] >= accounts and state["stored"] >= history and state["depth"] == 0

    def progress(elapsed: float) -> None:
        log(f"{rig.name}: {state.get('connected')}/{accounts} connected, {state.get('stored')}/{history} history "
            f"messages stored, spool depth {state.get('depth')} after {elapsed:.0f} s")

    poll(ready, timeout_s, f"{accounts} accounts connected and {history} messages stored", every_s=0.5,
         progress=progress)


def phase_latency(args, emulator_host: Optional[str]) -> dict:
    n, rate, seconds = args.latency_accounts, args.latency_rate, args.latency_seconds
    chats, per_chat = 5, 5
    world = small_world(n, chats, per_chat)
    per_account = int(rate * seconds + 1e-9)
    expected = n * per_account
    log(f"latency: {n} accounts x {rate:g} msgs/s for {seconds:g} s = {expected} live messages")
    with Rig("latency", world, args, emulator_host) as rig:
        t0 = time.monotonic()
        rig.add_accounts([a["phone"] for a in world["accounts"]])
        settle(rig, n, n * chats * per_chat, args.timeout, args.stall)
        log(f"latency: {n} accounts connected, history stored, spool empty after {time.monotonic() - t0:.1f} s")
        time.sleep(1.0)
        before = scrape(rig.daemon)
        live_before = rig.reader.messages("realtime")
        interval = 1.0 / rate
        events = [{"at": round(i * interval / n, 4), "account": phone(i), "event": "traffic",
                   "rate": rate, "for": seconds} for i in range(n)]
        rig.sim.inject(*events)
        started = time.monotonic()
        log(f"latency: traffic injected (staggered over {interval:g} s); waiting ~{seconds:g} s")

        def stored() -> int:
            return int(scrape(rig.daemon)[STORE_METRIC]["count"] - before[STORE_METRIC]["count"])

        progress_at = [0.0]

        def check() -> bool:
            if stored() >= expected:
                return True
            elapsed = time.monotonic() - started
            if elapsed - progress_at[0] >= 5:
                progress_at[0] = elapsed
                delivered = rig.sim.stats()["totals"].get("delivered", 0)
                log(f"latency: {elapsed:.0f} s: {stored()}/{expected} live messages stored "
                    f"(simulator delivered {delivered} messages in total), spool depth {spool_depth(rig.data_dir)}")
            return False

        poll(check, seconds + args.timeout, f"{expected} live messages stored", every_s=0.5)
        time.sleep(0.5)
        after = scrape(rig.daemon)
        live = rig.reader.messages("realtime") - live_before
        spool = hist_delta(after[SPOOL_METRIC], before[SPOOL_METRIC])
        store = hist_delta(after[STORE_METRIC], before[STORE_METRIC])
        spool_p99, spool_note = quantile(0.99, spool)
        store_p99, store_note = quantile(0.99, store)
        log(f"latency: {live} live messages in the store after {time.monotonic() - started:.1f} s")
        log(f"latency: {SPOOL_METRIC} {hist_summary(spool)}")
        log(f"latency: {STORE_METRIC} {hist_summary(store)}")
        log(f"latency: p99 event->spool {_ms(spool_p99)} ({spool_note}); "
            f"p99 event->store {_ms(store_p99)} ({store_note}); bucket-estimated")
        cross = sorted(rig.reader.live_latencies_ms())
        if cross:
            p = cross[min(len(cross) - 1, int(math.ceil(0.99 * len(cross))) - 1)]
            log(f"latency: cross-check from the store (createdAt - simulator timestamp, ms resolution, "
                f"includes the simulator->daemon hop): n={len(cross)} p50={cross[len(cross) // 2]:.0f} ms "
                f"p99={p:.0f} ms max={cross[-1]:.0f} ms")
        return {"spool_p99_ms": spool_p99 * 1000 if spool_p99 is not None else None,
                "store_p99_ms": store_p99 * 1000 if store_p99 is not None else None,
                "spool_note": spool_note, "store_note": store_note, "live_messages": live,
                "observed": int(store["count"])}


# --- phase 2b: realtime behind a history burst (head-of-line blocking) ----------------


def phase_hol(args, emulator_host: Optional[str]) -> dict:
    """Live accounts at `--latency-rate` msgs/s while `--hol-big` other accounts ingest
    `--hol-history` history messages each: realtime event -> stored, p99, measured from the
    store (createdAt - the simulator's message time) for the live messages only."""
    live_n, big_n, history = args.latency_accounts, args.hol_big, args.hol_history
    rate, seconds = args.latency_rate, args.latency_seconds
    chats = 20
    world = small_world(live_n, 2, 2)
    for i in range(big_n):
        world["accounts"].append({"phone": phone(live_n + i), "paired": True, "initialSyncPerChat": history // chats,
                                  "generate": {"chats": chats, "messagesPerChat": history // chats}})
    log(f"hol: {live_n} live accounts x {rate:g} msgs/s for {seconds:g} s while {big_n} accounts ingest "
        f"{history} history messages each")
    with Rig("hol", world, args, emulator_host) as rig:
        rig.add_accounts([a["phone"] for a in world["accounts"][:live_n]])
        settle(rig, live_n, live_n * 4, args.timeout, args.stall)
        interval = 1.0 / rate
        rig.sim.inject(*({"at": round(i * interval / live_n, 4), "account": phone(i), "event": "traffic",
                          "rate": rate, "for": seconds} for i in range(live_n)))
        time.sleep(min(5.0, seconds / 4))
        baseline = sorted(rig.reader.live_latencies_ms())
        log(f"hol: before the burst: {len(baseline)} live messages stored, p99 {_p(baseline, 0.99):.0f} ms")
        burst_started = time.monotonic()
        before = scrape(rig.daemon)
        rig.add_accounts([a["phone"] for a in world["accounts"][live_n:]], first=live_n)
        expected_live = int(live_n * rate * seconds)

        def done() -> bool:
            return rig.reader.messages("realtime") >= expected_live
        poll(done, seconds + args.timeout, f"{expected_live} live messages stored", every_s=0.5)
        after = scrape(rig.daemon)
        stored_history = rig.reader.messages() - rig.reader.messages("realtime")
        burst_s = time.monotonic() - burst_started
        # The daemon's own view (spool append -> stored), without the simulator -> daemon hop:
        # the simulator is one process that also serializes the burst's history.
        inside, inside_note = quantile(0.99, hist_delta(after[STORE_METRIC], before[STORE_METRIC]))
        log(f"hol: inside the daemon during the burst: spool->store p99 {_ms(inside)} ({inside_note})")
        appends = hist_delta(after[SPOOL_METRIC], before[SPOOL_METRIC])
        log(f"hol: transport callback -> spool append during the burst (live and history events): "
            f"{hist_summary(appends)}")
        all_live = sorted(rig.reader.live_latencies_ms())
        log(f"hol: {len(all_live)} live messages; {stored_history} history messages stored {burst_s:.0f} s after "
            f"the burst began; live event->store p50 {_p(all_live, 0.5):.0f} ms p99 {_p(all_live, 0.99):.0f} ms "
            f"max {all_live[-1]:.0f} ms (before the burst p99 {_p(baseline, 0.99):.0f} ms)")
        return {"hol_live_p99_ms": _p(all_live, 0.99), "hol_live_max_ms": all_live[-1] if all_live else None,
                "hol_store_p99_ms": None if inside is None else inside * 1000, "hol_history_stored": stored_history}


def phase_outage(args, emulator_host: Optional[str]) -> dict:
    """`--latency-accounts` live accounts at `--latency-rate` msgs/s while the store is
    unreachable for `--outage-seconds` (SQLite: this process holds an exclusive lock on the
    store file), then back. Figures: the daemon's RSS during the outage (first and largest
    sample: flat means the backlog is not piling up in memory), and how fast the messages
    of the outage are stored once the store is back (backlog / seconds until the last one
    is stored), as a ratio of the history ingest rate of the same run."""
    if args.store != "sqlite":
        return {"note": "outage: measured on SQLite only (the bench cannot take the emulator away and back)"}
    n, rate, outage = args.latency_accounts, args.latency_rate, args.outage_seconds
    world = small_world(n, 2, 2)
    backlog = int(n * int(rate * outage + 1e-9))
    log(f"outage: {n} accounts x {rate:g} msgs/s, store unreachable for {outage:g} s ({backlog} messages)")
    with Rig("outage", world, args, emulator_host) as rig:
        rig.add_accounts([a["phone"] for a in world["accounts"]])
        settle(rig, n, n * 4, args.timeout, args.stall)
        pid = rig.daemon.proc.pid
        live_before = rig.reader.messages("realtime")
        rss_before = sample_rss(pid, samples=3)
        lock = sqlite3.connect(rig.data_dir / "wasync.db", timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # every write of the daemon fails (after its busy timeout)
        interval = 1.0 / rate
        rig.sim.inject(*({"at": round(i * interval / n, 4), "account": phone(i), "event": "traffic",
                          "rate": rate, "for": outage} for i in range(n)))
        down_at = time.monotonic()
        samples: list[int] = []
        while time.monotonic() - down_at < outage:
            time.sleep(min(5.0, max(0.0, outage - (time.monotonic() - down_at))))
            samples.append(rss_bytes(pid))
            log(f"outage: {time.monotonic() - down_at:.0f} s down: VmRSS {samples[-1] / MiB:.1f} MiB, "
                f"spool depth {spool_depth(rig.data_dir)}, {rig.connected()}/{n} connected")
        lock.execute("ROLLBACK")
        lock.close()
        back_at = time.monotonic()
        log("outage: the store is back")

        def drained() -> bool:
            return rig.reader.messages("realtime") - live_before >= backlog

        poll(drained, args.timeout, f"the {backlog} messages of the outage stored", every_s=0.1,
             progress=lambda elapsed: log(f"outage: {elapsed:.0f} s after: "
                                          f"{rig.reader.messages('realtime') - live_before}/{backlog} stored, "
                                          f"{rig.connected()}/{n} connected, spool depth {spool_depth(rig.data_dir)}"))
        drain_s = time.monotonic() - back_at
        growth = (max(samples) - rss_before) / MiB
        log(f"outage: all {backlog} stored {drain_s:.1f} s after the store came back ({backlog / drain_s:.0f} msgs/s); "
            f"VmRSS before {rss_before / MiB:.1f} MiB, during the outage {min(samples) / MiB:.1f}-"
            f"{max(samples) / MiB:.1f} MiB (+{growth:.1f} MiB)")
        return {"outage_drain_msgs_per_s": backlog / drain_s, "outage_drain_s": drain_s,
                "outage_rss_growth_mib": growth}


def phase_instances(args, emulator_host: Optional[str]) -> dict:
    """Cold start of `--instances-accounts` accounts when connects take turns per process
    (WASYNC_SIM_REGISTRATION_MS=`--registration-ms`, as neonize registers one client at a
    time), on 1, 2 and 4 instances sharing one data dir (the lease coordinator spreads
    the accounts): seconds from `wasync run` until the simulator sees every account
    connected. SQLite only (the instances share the embedded store)."""
    if args.store != "sqlite":
        return {"note": "instances: measured on SQLite only"}
    n, reg_ms = args.instances_accounts, args.registration_ms
    world = small_world(n, 1, 1)
    out: dict[str, float] = {}
    for k in args.instance_counts:
        workdir = Path(tempfile.mkdtemp(prefix=f"wasync-bench-instances{k}-"))
        sim = SimProcess(world, workdir / "sim", speed=1.0).start(timeout_s=180)
        env = {"WASYNC_TRANSPORT": sim.address, "WASYNC_SIM_REGISTRATION_MS": str(reg_ms),
               "WASYNC_ADMIN_RATE_PER_MINUTE": str(BENCH_ADMIN_RATE),
               "WASYNC_MAX_STARTS_PER_SECOND": str(args.starts_per_second), "LOG_LEVEL": args.daemon_log_level}
        daemons: list[DaemonProcess] = []

        def connected() -> int:
            return sum(1 for a in sim.stats()["accounts"].values() if a.get("connected"))

        def start_all() -> float:
            daemons[:] = [DaemonProcess(workdir / "daemon", env) for _ in range(k)]
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=k) as pool:
                list(pool.map(lambda d: d.start(timeout_s=60), daemons))
            return started

        try:
            start_all()
            first = daemons[0]
            for i in range(n):
                status, body = first.request("POST", "/api/whatsapp/accounts",
                                             {"accountId": account_id(i), "phone": world["accounts"][i]["phone"]})
                if status != 201:
                    raise RuntimeError(f"adding {account_id(i)}: HTTP {status} {body}")
            poll(lambda: connected() >= n, args.timeout, f"{n} accounts connected on {k} instances", every_s=0.2)
            with ThreadPoolExecutor(max_workers=k) as pool:
                codes = list(pool.map(lambda d: d.stop(timeout_s=90), daemons))
            if any(codes):
                raise RuntimeError(f"instances exited {codes} on SIGTERM")
            poll(lambda: connected() == 0, 30, "every session closed", every_s=0.2)
            started = start_all()
            poll(lambda: connected() >= n, args.timeout, f"{n} accounts connected again on {k} instances",
                 every_s=0.1)
            out[str(k)] = time.monotonic() - started
            log(f"instances: {k} instance(s), {n} accounts, connects {reg_ms} ms each per process: "
                f"all connected {out[str(k)]:.1f} s after `wasync run`")
        finally:
            for d in daemons:
                try:
                    d.stop(timeout_s=90)
                except (AssertionError, OSError) as exc:
                    log(f"instances: stopping an instance: {exc}")
                    d.kill()
            sim.stop()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    return {"instances_cold_start_s": out}


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(math.ceil(q * len(values))) - 1))]


# --- phase 3: RSS per account --------------------------------------------------------


def sample_rss(pid: int, samples: int = 5, every_s: float = 0.5) -> int:
    values = []
    for i in range(samples):
        values.append(rss_bytes(pid))
        if i + 1 < samples:
            time.sleep(every_s)
    return int(statistics.median(values))


def phase_rss(args, emulator_host: Optional[str]) -> dict:
    n = args.rss_accounts
    chats, per_chat = 1, 3
    world = small_world(n, chats, per_chat)
    log(f"rss: {n} accounts, {chats} chat x {per_chat} messages each")
    with Rig("rss", world, args, emulator_host) as rig:
        pid = rig.daemon.proc.pid
        time.sleep(args.rss_idle)
        rss0 = sample_rss(pid)
        threads0 = int(proc_status(pid)["Threads"])
        log(f"rss: 0 accounts: VmRSS {rss0 / MiB:.1f} MiB, {threads0} threads")
        t0 = time.monotonic()
        added = rig.add_accounts([a["phone"] for a in world["accounts"]])
        log(f"rss: {n} accounts added in {added:.1f} s")
        try:
            settle(rig, n, n * chats * per_chat, args.timeout, args.stall)
        except PhaseStalled as exc:
            stats = rig.sim.stats()
            rss_n = sample_rss(pid)
            status = proc_status(pid)
            connected = rig.connected()
            log(f"rss: STALLED: {exc}; simulator: {stats['sockets']} sockets open, "
                f"{sum(1 for a in stats['accounts'].values() if a.get('connected'))} accounts connected, "
                f"{stats['totals'].get('connectionsOpened')} connections opened")
            log(f"rss: at the stall: VmRSS {rss_n / MiB:.1f} MiB, {status['Threads']} threads, {n} account actors, "
                f"{connected} connected: ({rss_n / MiB:.1f} - {rss0 / MiB:.1f}) / {n} = "
                f"{(rss_n - rss0) / n / MiB:.3f} MiB per account added (not the figure asked for: "
                f"not all accounts connected)")
            rig.failed = True
            return {"rss_mib_per_account": None, "rss0_mib": rss0 / MiB, "rss_n_mib": rss_n / MiB,
                    "error": f"rss: {exc}",
                    "note": f"RSS per account n/a: only {connected}/{n} accounts connected ({exc})"}
        log(f"rss: all {n} connected with their history stored after {time.monotonic() - t0:.1f} s; "
            f"idling {args.rss_idle:g} s")
        stats = rig.sim.stats()
        time.sleep(args.rss_idle)
        rss_n = sample_rss(pid)
        status = proc_status(pid)
        per = (rss_n - rss0) / n / MiB
        log(f"rss: {n} accounts: VmRSS {rss_n / MiB:.1f} MiB, {status['Threads']} threads "
            f"(simulator: {stats['sockets']} sockets, {stats['totals'].get('connectionsOpened')} connections opened); "
            f"({rss_n / MiB:.1f} - {rss0 / MiB:.1f}) / {n} = {per:.3f} MiB per account")
        # Cold start: `wasync run` on a store that holds all of them, until every one is connected.
        started = rig.restart()
        settle(rig, n, n * chats * per_chat, args.timeout, args.stall)
        cold = time.monotonic() - started
        log(f"rss: cold start: all {n} accounts connected {cold:.1f} s after `wasync run` began")
        return {"rss_mib_per_account": per, "rss0_mib": rss0 / MiB, "rss_n_mib": rss_n / MiB,
                "threads0": threads0, "threads_n": int(status["Threads"]), "cold_start_s": cold}


# --- main ----------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["ingest", "latency", "hol", "outage", "rss", "instances"], action="append",
                   help="run only this phase (repeatable)")
    p.add_argument("--quick", action="store_true", help="small sizes everywhere (a smoke run of a minute or so)")
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    p.add_argument("--store", choices=["sqlite", "firestore"], default="sqlite")
    p.add_argument("--emulator", help="with --store firestore: a running emulator at HOST:PORT")
    p.add_argument("--ingest-accounts", type=int, default=10)
    p.add_argument("--ingest-chats", type=int, default=20)
    p.add_argument("--ingest-messages-per-chat", type=int, default=500)
    p.add_argument("--ingest-sync-per-chat", type=int, help="initialSyncPerChat (default: all of them)")
    p.add_argument("--latency-accounts", type=int, default=50)
    p.add_argument("--latency-rate", type=float, default=2.0, help="traffic msgs/s per account")
    p.add_argument("--latency-seconds", type=float, default=30.0)
    p.add_argument("--hol-big", type=int, default=10, help="hol: accounts ingesting history during live traffic")
    p.add_argument("--hol-history", type=int, default=20000, help="hol: history messages of each big account")
    p.add_argument("--outage-seconds", type=float, default=60.0, help="outage: how long the store is unreachable")
    p.add_argument("--instances-accounts", type=int, default=100, help="instances: accounts to start")
    p.add_argument("--registration-ms", type=int, default=200,
                   help="instances: WASYNC_SIM_REGISTRATION_MS (neonize against WhatsApp: ~1,000)")
    p.add_argument("--instance-counts", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    p.add_argument("--rss-accounts", type=int, default=500)
    p.add_argument("--rss-idle", type=float, default=5.0, help="idle seconds before each RSS sample")
    p.add_argument("--starts-per-second", type=float, default=100.0, help="WASYNC_MAX_STARTS_PER_SECOND")
    p.add_argument("--no-raw-interleaved", dest="raw_interleaved", action="store_false",
                   help="skip the second raw SQLite run in store_ingest.py's interleaved order")
    p.add_argument("--stall", type=float, default=30.0,
                   help="give up a wait when nothing moved for this many seconds")
    p.add_argument("--daemon-log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--timeout", type=float, default=180.0, help="seconds each wait may take")
    p.add_argument("--keep", action="store_true", help="keep the work directories (logs, databases)")
    args = p.parse_args(argv)
    if args.quick:
        args.ingest_accounts, args.ingest_chats, args.ingest_messages_per_chat = 2, 5, 200
        args.latency_accounts, args.latency_seconds = 10, 10.0
        args.rss_accounts, args.rss_idle = 50, 2.0
        args.hol_big, args.hol_history, args.outage_seconds = 2, 2_000, 20.0
        args.instances_accounts, args.instance_counts = 20, [1, 2]
    if args.ingest_sync_per_chat is None:
        args.ingest_sync_per_chat = args.ingest_messages_per_chat
    return args


def table(results: dict, store: str = "sqlite") -> str:
    rows = [("figure", "measured", "target", "ratio", "")]
    target_ratio = INGEST_RATIO[store]

    def row(name, value, unit, target_text, ratio, ok):
        shown = "n/a" if value is None else f"{value:,.{2 if value < 100 else 0}f} {unit}"
        rows.append((name, shown, target_text, "n/a" if ratio is None else f"{ratio:.2f}",
                     "" if ok is None else ("ok" if ok else "MISSED")))

    ing, raw = results.get("ingest_msgs_per_s"), results.get("raw_msgs_per_s")
    ratio = ing / raw if ing and raw else None
    row("history ingest, end to end", ing, "msgs/s", f">= {target_ratio} x raw", ratio,
        None if ratio is None else ratio >= target_ratio)
    row("raw ceiling (store client)", raw, "msgs/s", "(ceiling)", None, None)
    one = results.get("one_by_one_msgs_per_s")
    if one:
        row("one write per message (old path)", one, "msgs/s", ">= 10 x this", ing / one if ing else None,
            None if not ing else ing / one >= 10)
    for key, name in (("spool_p99_ms", "event->spool p99 (bucket-est.)"),
                      ("store_p99_ms", "event->store p99 (bucket-est.)"),
                      ("hol_live_p99_ms", "live p99 during history burst"),
                      ("hol_store_p99_ms", "  same, spool->store (bucket-est.)")):
        v = results.get(key)
        row(name, v, "ms", f"<= {TARGETS[key]:g} ms", None if v is None else v / TARGETS[key],
            None if v is None else v <= TARGETS[key])
    v, ing = results.get("outage_drain_msgs_per_s"), results.get("ingest_msgs_per_s")
    ratio = v / ing if v and ing else None
    row("backlog drain after a store outage", v, "msgs/s", ">= 0.5 x ingest", ratio,
        None if ratio is None else ratio >= 0.5)
    v = results.get("outage_rss_growth_mib")
    row("  RSS growth during the outage", v, "MiB", "flat", None, None)
    v = results.get("cold_start_s")
    row("cold start, 500 accounts", v, "s", "<= 15 s", None if v is None else v / 15, None if v is None else v <= 15)
    for k, seconds in (results.get("instances_cold_start_s") or {}).items():
        one = (results.get("instances_cold_start_s") or {}).get("1")
        row(f"cold start, serialized connects, {k} inst.", seconds, "s", "(1 inst.) / k", None if not one else
            seconds / one, None)
    v = results.get("rss_mib_per_account")
    row("daemon RSS per account", v, "MiB", f"<= {TARGETS['rss_mib_per_account']:g} MiB",
        None if v is None else v / TARGETS["rss_mib_per_account"],
        None if v is None else v <= TARGETS["rss_mib_per_account"])
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i in (0, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.append(f"ratio: ingest/raw (target >= {target_ratio}); otherwise measured/target (target <= 1). "
                 "p99s are interpolated within the daemon's histogram buckets.")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    phases = args.only or ["ingest", "latency", "hol", "outage", "rss", "instances"]

    def on_term(signum, frame):
        raise SystemExit(128 + signum)  # run every finally: processes are stopped

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, Any] = {}
    errors: list[str] = []
    notes: list[str] = []
    emulator = None
    emulator_host = args.emulator
    started = time.monotonic()
    try:
        if args.store == "firestore" and not emulator_host:
            from emulator import FirestoreEmulator

            log("starting the Firestore emulator …")
            emulator = FirestoreEmulator().start()
            emulator_host = emulator.host
        if args.store == "firestore":
            os.environ["FIRESTORE_EMULATOR_HOST"] = emulator_host
        for name, run in (("ingest", phase_ingest), ("latency", phase_latency), ("hol", phase_hol),
                          ("outage", phase_outage), ("rss", phase_rss), ("instances", phase_instances)):
            if name in phases:
                log(f"=== phase {name} ===")
                t = time.monotonic()
                try:
                    result = run(args, emulator_host)
                except (PhaseTimeout, RuntimeError, OSError, AssertionError) as exc:
                    result = {"error": f"{name}: {type(exc).__name__}: {exc}", "note": f"{name} failed: {exc}"}
                if "error" in result:
                    errors.append(result.pop("error"))
                    log(f"=== phase {name} FAILED after {time.monotonic() - t:.0f} s: {errors[-1]} ===")
                else:
                    log(f"=== phase {name} done in {time.monotonic() - t:.0f} s ===")
                if "note" in result:
                    notes.append(result.pop("note"))
                results.update(result)
    finally:
        if emulator:
            emulator.stop()
    log(f"total {time.monotonic() - started:.0f} s")
    keys = ("ingest_msgs_per_s", "raw_msgs_per_s", "one_by_one_msgs_per_s", "spool_p99_ms", "store_p99_ms", "hol_live_p99_ms",
            "hol_store_p99_ms", "outage_drain_msgs_per_s", "outage_rss_growth_mib", "rss_mib_per_account",
            "cold_start_s", "instances_cold_start_s")
    if args.json:
        print(json.dumps({k: results.get(k) for k in keys}))
    else:
        print(table(results, args.store))
        for note in notes:
            print(f"NOTE: {note}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
