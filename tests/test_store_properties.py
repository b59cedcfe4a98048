"""Property tests over both stores: order and replays never change the outcome; leases
never have two holders for one epoch, including two processes racing on one SQLite file."""
from __future__ import annotations

import itertools
import json
import multiprocessing
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store_fixtures import T0, open_fresh_store, out, race_for_lease, receipt
from wasync.runtime.model import MessageStatus, ReceiptKind, SyncSource, thread_id

NOW = T0 + 60_000
CHAT = "15552223333@s.whatsapp.net"
RANK = {None: -1, "queued": 0, "failed": 1, "sent": 2, "delivered": 3, "read": 4, "played": 5}
STATUS_OF = {ReceiptKind.DELIVERED: "delivered", ReceiptKind.READ: "read", ReceiptKind.PLAYED: "played"}
VOLATILE = {"syncSource", "createdAt", "syncedAt", "tsServer", "updatedAt"}
_accounts = itertools.count()


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    from wasync.runtime.store.sqlite import SqliteStore

    s = SqliteStore(tmp_path_factory.mktemp("props") / "store.db")
    yield s
    s.close()


@pytest.fixture(scope="module")
def firestore_store(firestore_emulator):
    from wasync.runtime.store.firestore import FirestoreStore

    s = FirestoreStore(project=f"props-{time.time_ns()}")
    yield s
    s.close()


# The emulator answers in milliseconds, SQLite in microseconds: fewer examples there.
EXAMPLES = {"sqlite": 60, "firestore": 8}


# One operation: ("msg", id, status, source, ts) or ("rcpt", id, kind)
message_op = st.tuples(st.just("msg"), st.sampled_from(["M1", "M2", "M3"]),
                       st.sampled_from([MessageStatus.QUEUED, MessageStatus.SENT, MessageStatus.DELIVERED, None]),
                       st.sampled_from([SyncSource.REALTIME, SyncSource.HISTORY_SYNC, SyncSource.BACKFILL]))
receipt_op = st.tuples(st.just("rcpt"), st.sampled_from(["M1", "M2", "M3", "M4"]),
                       st.sampled_from([ReceiptKind.DELIVERED, ReceiptKind.READ, ReceiptKind.PLAYED,
                                        ReceiptKind.RETRY]))
TS = {"M1": T0 + 1000, "M2": T0 + 3000, "M3": T0 + 2000}


def apply(store, account, ops):
    for op in ops:
        if op[0] == "msg":
            _, mid, status, source = op
            store.upsert_messages([out(mid, ts=TS[mid], status=status, source=source, account=account,
                                       body=f"text of {mid}")], NOW)
        else:
            _, mid, kind = op
            store.apply_receipts([receipt([mid], kind, ts=T0 + 10_000 + list(STATUS_OF).index(kind)
                                          if kind in STATUS_OF else T0, account=account)], NOW)
    store.flush()


def snapshot(store, account):
    tid = thread_id(account, CHAT)
    msgs = {m["id"]: {k: v for k, v in m.items() if k not in VOLATILE}
            for m in store.list_messages(account, tid, limit=100).items}
    thread = store.get_thread(tid)
    thread = thread and {k: v for k, v in thread.items() if k not in VOLATILE}
    return msgs, thread


@pytest.mark.parametrize("kind", ["sqlite", "firestore"])
def test_any_order_and_replay_give_the_same_state(kind, request):
    store = request.getfixturevalue(f"{kind}_store")
    run = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                   deadline=None, max_examples=EXAMPLES[kind])(given(
        ops=st.lists(st.one_of(message_op, receipt_op), min_size=1, max_size=10), data=st.data())(
        lambda ops, data: same_state_property(store, ops, data)))
    run()


def same_state_property(any_store, ops, data):
    shuffled = data.draw(st.permutations(ops))
    replayed = shuffled + data.draw(st.lists(st.sampled_from(ops), max_size=5))
    a, b = f"p{next(_accounts)}", f"p{next(_accounts)}"
    apply(any_store, a, ops)
    apply(any_store, b, replayed)
    msgs_a, thread_a = snapshot(any_store, a)
    msgs_b, thread_b = snapshot(any_store, b)
    strip = lambda docs: {i: {k: v for k, v in d.items() if k != "accountId"} for i, d in docs.items()}
    assert strip(msgs_a) == strip(msgs_b)
    # status is the furthest anything said; no message exists without a copy of it
    stored_ids = {op[1] for op in ops if op[0] == "msg"}
    assert set(msgs_a) == stored_ids
    for mid, doc in msgs_a.items():
        said = [op[2].value if op[2] else None for op in ops if op[0] == "msg" and op[1] == mid]
        said += [STATUS_OF[op[2]] for op in ops if op[0] == "rcpt" and op[1] == mid and op[2] in STATUS_OF]
        assert RANK[doc.get("status")] == max(RANK[s] for s in said)
    # the thread describes the newest stored message (and exists only with a message)
    if not stored_ids:
        assert thread_a is None and thread_b is None
        return
    newest = max(stored_ids, key=lambda i: (TS[i], i))
    assert thread_a["lastMessageAtMs"] == thread_b["lastMessageAtMs"] == TS[newest]
    assert thread_a["lastMessagePreview"] == f"text of {newest}"


lease_op = st.tuples(st.sampled_from(["read", "acquire", "renew", "release"]), st.sampled_from(["h1", "h2", "h3"]),
                     st.integers(min_value=0, max_value=12_000))


@pytest.mark.parametrize("kind", ["sqlite", "firestore"])
def test_leases_one_holder_per_epoch_and_epochs_increase(kind, request):
    store = request.getfixturevalue(f"{kind}_store")
    run = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                   deadline=None, max_examples=EXAMPLES[kind] * 2 // 3)(given(
        ops=st.lists(lease_op, min_size=1, max_size=25))(lambda ops: lease_property(store, ops)))
    run()


def lease_property(any_store, ops):
    """Three holders reading, taking (against what each last read), renewing and releasing
    one lease: a take succeeds exactly when nothing was written since that holder's read;
    every epoch has one holder; epochs only go up; only the holder can renew."""
    account = f"l{next(_accounts)}"
    now, ttl = NOW, 10_000
    holder_of_epoch: dict[int, str] = {}
    seen: dict[str, object] = {}  # holder -> the record it last read (None: no lease yet)
    mine: dict[str, object] = {}  # holder -> the lease it last got back (it believes it holds)
    last_epoch = 0
    for kind, holder, advance in ops:
        now += advance
        current = any_store.get_lease(account)
        if kind == "read":
            seen[holder] = current
            continue
        if kind == "release":
            if holder in mine:
                released = any_store.release_lease(account, holder, mine.pop(holder).epoch)
                assert released == (current is not None and current.holder == holder and not current.released)
            continue
        if kind == "acquire":
            if holder not in seen:
                continue
            expected = seen.pop(holder)
            lease = any_store.acquire_lease(account, holder, expected, now, ttl)
            unchanged = current is None if expected is None else expected.same_record(current)
            assert (lease is not None) == unchanged
        else:
            if holder not in mine:
                continue
            renewed = any_store.renew_leases([mine[holder]], now, ttl)
            still_ours = current is not None and current.holder == holder and not current.released and \
                current.epoch == mine[holder].epoch
            assert bool(renewed) == still_ours
            lease = renewed[0] if renewed else None
            if lease is None:
                mine.pop(holder)
        if lease is None:
            continue
        assert holder_of_epoch.setdefault(lease.epoch, lease.holder) == holder
        assert lease.epoch >= last_epoch
        last_epoch = lease.epoch
        mine = {h: m for h, m in mine.items() if m.epoch == lease.epoch}
        mine[holder] = lease


def test_two_processes_race_for_one_lease(tmp_path):
    path = tmp_path / "shared.db"
    from wasync.runtime.store.sqlite import SqliteStore

    SqliteStore(path).close()  # migrate once
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=race_for_lease, args=(str(path), f"proc{i}", 400, results)) for i in range(2)]
    for p in procs:
        p.start()
    got = [json.loads(results.get(timeout=120)) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    acquisitions = sorted(a for proc in got for a in proc)
    assert all(proc for proc in got), "both processes should win the lease at some point"
    holder_of_epoch = {}
    for epoch, holder, _ in acquisitions:
        assert holder_of_epoch.setdefault(epoch, holder) == holder, f"epoch {epoch} had two holders"
    # each process saw epochs only move forward, in its own time order
    for proc in got:
        seen = [epoch for epoch, _, _ in proc]
        assert seen == sorted(seen)
    # and every change of holder came with a higher epoch
    by_epoch = [holder_of_epoch[e] for e in sorted(holder_of_epoch)]
    assert len(set(by_epoch)) == 2


def test_processes_starting_together_on_a_fresh_store_all_open_it(tmp_path):
    """Two instances started at once on a new data dir: turning the new file to WAL
    answered "database is locked" at once in one of them, which exited 1."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    for round_ in range(6):
        go = ctx.Event()
        procs = [ctx.Process(target=open_fresh_store, args=(str(tmp_path / f"fresh{round_}.db"), go, results))
                 for _ in range(4)]
        for p in procs:
            p.start()
        time.sleep(0.5)  # all four imported and waiting
        go.set()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert outcomes == ["ok"] * 4, outcomes
