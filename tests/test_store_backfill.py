"""The backfill engine's store verbs, the same tests against SqliteStore and FirestoreStore
(emulator): thread histories, the backfill fields of thread documents, thread repair,
and the job fields of account documents (SPEC §2)."""
from __future__ import annotations

import pytest

import test_store_contract
from store_fixtures import T0, msg, out
from wasync.runtime.account import AccountPatch, JobTimes
from wasync.runtime.backfill import Job, JobOutcome, JobRun, MessageRef, RepairResult, ThreadHistory, Trigger
from wasync.runtime.model import MessageType, ThreadUpdate, thread_id
from wasync.runtime.store.base import Fence, StaleFence
from wasync.runtime.store.schema import THREADS, iso, ms_to_dt
from wasync.runtime.store.sqlite_codec import encode

store = test_store_contract.store  # the fixture: SqliteStore, then FirestoreStore on the emulator
NOW = T0 + 60_000
A, B, C, D = (f"1555000000{n}@s.whatsapp.net" for n in range(4))


def at(ms: int) -> str:
    return iso(ms_to_dt(ms))


def plant_thread(store, tid: str, doc: dict) -> None:
    """Write a thread document exactly as given, past the store's merge rules: what an
    older writer (the old backend, another version) may have left."""
    if store.name == "sqlite":
        with store._write() as conn:
            conn.execute("INSERT INTO threads (thread_id, account_id, last_message_at_ms, doc) VALUES (?,?,?,?) "
                         "ON CONFLICT (thread_id) DO UPDATE SET doc = excluded.doc, "
                         "last_message_at_ms = excluded.last_message_at_ms",
                         (tid, doc["accountId"], doc.get("lastMessageAtMs"), encode(doc)))
    else:
        store._db.document(THREADS, tid).set(doc)


def remove_thread(store, tid: str) -> None:
    if store.name == "sqlite":
        with store._write() as conn:
            conn.execute("DELETE FROM threads WHERE thread_id = ?", (tid,))
    else:
        store._db.document(THREADS, tid).delete()


def named_only(chat: str, account: str = "acct1") -> ThreadUpdate:
    """A thread that has a name but no message yet."""
    return ThreadUpdate(account, chat, display_name="Named", is_group=False)


# --- thread histories ------------------------------------------------------------------------


def test_history_bounds_whatever_order_messages_arrive_in(store):
    store.upsert_messages([msg(id="M2", chat=A, ts=T0 + 2000)], NOW)
    store.upsert_messages([out("M3", chat=A, ts=T0 + 3000)], NOW)
    store.upsert_messages([msg(id="M1", chat=A, ts=T0 + 1000), msg(id="M0", chat=A, ts=T0 + 500)], NOW)
    store.upsert_messages([msg(id="M1", chat=A, ts=T0 + 1000)], NOW + 1)  # a replay counts once
    assert store.thread_history("acct1", A) == ThreadHistory(
        account_id="acct1", chat_jid=A, last_message_at_ms=T0 + 3000,
        oldest=MessageRef("M0", T0 + 500, from_me=False), newest=MessageRef("M3", T0 + 3000, from_me=True),
        stored=4, complete=False)


def test_history_ties_go_by_message_id(store):
    store.upsert_messages([msg(id="B", chat=A, ts=T0), out("C", chat=A, ts=T0)], NOW)
    store.upsert_messages([out("A", chat=A, ts=T0), msg(id="Z", chat=A, ts=T0 + 1), msg(id="0", chat=A, ts=T0 + 1)],
                          NOW)
    h = store.thread_history("acct1", A)
    assert h.oldest == MessageRef("A", T0, from_me=True)
    assert h.newest == MessageRef("Z", T0 + 1, from_me=False)
    assert h.stored == 5


def test_history_of_nothing_is_none(store):
    assert store.thread_history("acct1", A) is None
    store.upsert_messages([msg(id="X1", chat=A, account="other")], NOW)
    assert store.thread_history("acct1", A) is None


def test_history_of_a_thread_without_messages(store):
    store.update_threads([named_only(B)], NOW)
    assert store.thread_history("acct1", B) == ThreadHistory(
        account_id="acct1", chat_jid=B, last_message_at_ms=None, oldest=None, newest=None, stored=0,
        complete=False)


def test_history_of_messages_without_a_thread_document(store):
    store.upsert_messages([msg(id="N1", chat=A, ts=T0)], NOW)
    remove_thread(store, thread_id("acct1", A))
    assert store.thread_history("acct1", A) == ThreadHistory(
        account_id="acct1", chat_jid=A, last_message_at_ms=None, oldest=MessageRef("N1", T0, False),
        newest=MessageRef("N1", T0, False), stored=1, complete=False)


def test_list_thread_histories_latest_first_with_limit_and_activity(store):
    store.upsert_messages([msg(id="a1", chat=A, ts=T0 + 1000), msg(id="a2", chat=A, ts=T0 + 4000)], NOW)
    store.upsert_messages([msg(id="b1", chat=B, ts=T0 + 3000)], NOW)
    store.upsert_messages([msg(id="c1", chat=C, ts=T0 + 2000)], NOW)
    store.upsert_messages([msg(id="x1", chat=A, ts=T0 + 9000, account="other")], NOW)
    store.update_threads([named_only(D)], NOW)

    every = store.list_thread_histories("acct1", 10)
    assert [h.chat_jid for h in every] == [A, B, C, D]  # without lastMessageAtMs: last
    assert every[0] == store.thread_history("acct1", A)
    assert (every[0].stored, every[0].oldest.id, every[0].newest.id) == (2, "a1", "a2")
    assert every[3].stored == 0 and every[3].oldest is None
    assert [h.chat_jid for h in store.list_thread_histories("acct1", 2)] == [A, B]
    assert [h.chat_jid for h in store.list_thread_histories("acct1", 10, active_since_ms=T0 + 3000)] == [A, B]
    assert [h.chat_jid for h in store.list_thread_histories("acct1", 1, active_since_ms=T0 + 2000)] == [A]
    assert store.list_thread_histories("acct1", 10, active_since_ms=T0 + 5000) == []
    assert store.list_thread_histories("nobody", 10) == []
    assert store.list_thread_histories("acct1", 0) == store.list_thread_histories("acct1", -1) == []
    assert store.repair_threads("acct1", -1, NOW) == RepairResult(checked=0, fixed=0)


def test_list_thread_histories_threads_without_a_time_go_last_by_id(store):
    for chat in (C, A, D):
        store.update_threads([named_only(chat)], NOW)
    store.upsert_messages([msg(id="b1", chat=B, ts=T0)], NOW)
    assert [h.chat_jid for h in store.list_thread_histories("acct1", 10)] == [B, D, C, A]
    assert [h.chat_jid for h in store.list_thread_histories("acct1", 2)] == [B, D]


# --- backfill fields of thread documents ------------------------------------------------------


def test_history_complete_only_ever_becomes_true(store):
    tid = thread_id("acct1", A)
    store.upsert_messages([msg(id="H1", chat=A, ts=T0)], NOW)
    assert "historyComplete" not in store.get_thread(tid)
    assert store.thread_history("acct1", A).complete is False

    store.update_threads([ThreadUpdate("acct1", A, history_complete=True)], NOW + 1)
    store.update_threads([ThreadUpdate("acct1", A, history_complete=None, last_backfill_at_ms=T0 + 5)], NOW + 2)
    store.upsert_messages([msg(id="H2", chat=A, ts=T0 + 10_000)], NOW + 3)
    store.update_threads([ThreadUpdate("acct1", A, display_name="Ann")], NOW + 4)
    assert store.get_thread(tid)["historyComplete"] is True
    assert store.list_threads("acct1").items[0]["historyComplete"] is True
    assert store.thread_history("acct1", A).complete is True


def test_last_backfill_result_is_the_later_runs(store):
    tid = thread_id("acct1", A)
    store.upsert_messages([msg(id="R1", chat=A, ts=T0)], NOW)
    store.update_threads([ThreadUpdate("acct1", A, last_backfill_at_ms=T0 + 2000, last_backfill_result="ok")], NOW)
    store.flush()
    # an earlier run's result arriving late does not win, whether written alone or merged
    store.update_threads([ThreadUpdate("acct1", A, last_backfill_at_ms=T0 + 1000, last_backfill_result="timeout")],
                         NOW + 1)
    store.flush()
    assert store.get_thread(tid)["lastBackfillResult"] == "ok"
    store.update_threads([ThreadUpdate("acct1", A, last_backfill_at_ms=T0 + 3000, last_backfill_result="empty"),
                          ThreadUpdate("acct1", A, last_backfill_at_ms=T0 + 2500, last_backfill_result="error: x")],
                         NOW + 2)
    doc = store.get_thread(tid)
    assert doc["lastBackfillResult"] == "empty" and doc["lastBackfillAt"] == at(T0 + 3000)
    assert store.list_threads("acct1").items[0]["lastBackfillResult"] == "empty"
    h = store.thread_history("acct1", A)
    assert (h.last_backfill_at_ms, h.last_backfill_result) == (T0 + 3000, "empty")
    # a message (no run) keeps them
    store.upsert_messages([msg(id="R2", chat=A, ts=T0 + 10)], NOW + 3)
    assert store.get_thread(tid)["lastBackfillResult"] == "empty"


# --- thread repair ---------------------------------------------------------------------------


def test_repair_rewrites_what_is_wrong_and_reports_what_was_missing(store):
    ta, tb, tc, td = (thread_id("acct1", chat) for chat in (A, B, C, D))
    store.upsert_messages([msg(id="a1", chat=A, ts=T0 + 1000, body="old"),
                           msg(id="a2", chat=A, ts=T0 + 4000, body=None, message_type=MessageType.IMAGE)], NOW)
    store.upsert_messages([msg(id="b1", chat=B, ts=T0 + 3000, body="x" * 150)], NOW)
    store.upsert_messages([msg(id="d1", chat=D, ts=T0 + 2000, body="fine")], NOW)
    store.update_threads([named_only(C), ThreadUpdate("acct1", A, display_name="Ann", history_complete=True,
                                                      last_backfill_at_ms=T0, last_backfill_result="ok")], NOW)
    store.flush()
    good_a, good_b, good_c, good_d = (store.get_thread(t) for t in (ta, tb, tc, td))
    # A describes an older message; B lost its last-message fields (an older writer's doing)
    broken_a = {**store.get_thread(ta), "lastMessageAt": ms_to_dt(T0 + 1000), "lastMessageAtMs": T0 + 1000,
                "lastMessagePreview": "old", "lastMessageId": "a1", "lastBackfillAt": ms_to_dt(T0)}
    broken_a.pop("updatedAt")
    broken_b = {"accountId": "acct1", "clientJid": B, "isGroup": False, "displayName": "Bob"}
    plant_thread(store, ta, broken_a)
    plant_thread(store, tb, broken_b)

    result = store.repair_threads("acct1", 10, NOW + 100)
    assert result == RepairResult(checked=4, fixed=2, missing=(tb,))
    doc_a = store.get_thread(ta)
    assert {k: doc_a[k] for k in ("lastMessageAt", "lastMessageAtMs", "lastMessagePreview", "lastMessageId")} == {
        "lastMessageAt": at(T0 + 4000), "lastMessageAtMs": T0 + 4000, "lastMessagePreview": "[image]",
        "lastMessageId": "a2"}
    assert doc_a == {**good_a, "updatedAt": at(NOW + 100)}  # other fields untouched
    assert doc_a["displayName"] == "Ann" and doc_a["historyComplete"] is True
    assert store.get_thread(tb) == {**broken_b, "lastMessageAt": at(T0 + 3000), "lastMessageAtMs": T0 + 3000,
                                    "lastMessagePreview": "x" * 100, "lastMessageId": "b1",
                                    "updatedAt": at(NOW + 100)}
    assert store.get_thread(tc) == good_c  # no messages: left alone
    assert store.get_thread(td) == good_d
    assert [t["lastMessageId"] for t in store.list_threads("acct1").items] == ["a2", "b1", "d1"]
    assert store.repair_threads("acct1", 10, NOW + 200) == RepairResult(checked=4, fixed=0)
    # later messages merge with what the repair wrote
    store.upsert_messages([msg(id="b0", chat=B, ts=T0 + 2999, body="older")], NOW + 300)
    assert store.get_thread(tb)["lastMessageId"] == "b1"


def test_thread_updates_after_a_repair_keep_it(store):
    tid = thread_id("acct1", A)
    store.upsert_messages([msg(id="k1", chat=A, ts=T0 + 1000)], NOW)
    store.flush()
    plant_thread(store, tid, {"accountId": "acct1", "clientJid": A, "isGroup": False})
    # late enough that a caching store reads the broken document again before merging
    store.update_threads([ThreadUpdate("acct1", A, display_name="Ann")], NOW + 10_000)
    store.flush()
    assert "lastMessageAtMs" not in store.get_thread(tid)
    assert store.repair_threads("acct1", 10, NOW + 10_001) == RepairResult(checked=1, fixed=1, missing=(tid,))
    store.update_threads([ThreadUpdate("acct1", A, display_name="Anna")], NOW + 10_002)
    doc = store.get_thread(tid)
    assert (doc["displayName"], doc["lastMessageAtMs"], doc["lastMessageId"]) == ("Anna", T0 + 1000, "k1")


def test_repair_takes_the_latest_threads_first_up_to_its_limit(store):
    for n, chat in enumerate((A, B, C)):
        store.upsert_messages([msg(id=f"m{n}", chat=chat, ts=T0 + 1000 * n)], NOW)
    for chat in (A, B, C):
        tid = thread_id("acct1", chat)
        plant_thread(store, tid, {**store.get_thread(tid), "lastMessagePreview": "stale"})
    assert store.repair_threads("acct1", 2, NOW + 1) == RepairResult(checked=2, fixed=2)
    assert [store.get_thread(thread_id("acct1", chat))["lastMessagePreview"] for chat in (A, B, C)] == [
        "stale", "hi", "hi"]


def test_repair_creates_and_resurrects_nothing(store):
    assert store.repair_threads("ghost", 10, NOW) == RepairResult(checked=0, fixed=0)
    store.upsert_messages([msg(id="g1", chat=A, ts=T0)], NOW)
    remove_thread(store, thread_id("acct1", A))
    assert store.repair_threads("acct1", 10, NOW + 1) == RepairResult(checked=0, fixed=0)
    assert store.get_thread(thread_id("acct1", A)) is None
    assert store.list_accounts() == []


# --- job fields of account documents ----------------------------------------------------------


def run(job=Job.BACKFILL, started=T0, outcome=None, finished=None, trigger=Trigger.PERIODIC) -> AccountPatch:
    news = JobRun(job, trigger, started, "inst-1", outcome, finished)
    return AccountPatch(backfill=news) if job is Job.BACKFILL else AccountPatch(recent_sync=news)


def test_backfill_run_fields_round_trip(store):
    store.create_account("acct1", "15550001111", T0)
    assert store.list_account_records()[0].jobs == JobTimes()

    assert store.update_account("acct1", run(started=T0 + 10, trigger=Trigger.CONNECT), NOW)
    doc = store.get_account("acct1")
    assert {k: doc[k] for k in ("lastBackfillAt", "lastBackfillStatus", "lastAutoBackfillAt",
                                "lastAutoBackfillAttemptAt", "lastAutoBackfillStatus")} == {
        "lastBackfillAt": at(T0 + 10), "lastBackfillStatus": "running", "lastAutoBackfillAt": at(T0 + 10),
        "lastAutoBackfillAttemptAt": at(T0 + 10),
        "lastAutoBackfillStatus": {"running": True, "startedAt": at(T0 + 10), "trigger": "connect",
                                   "holder": "inst-1"}}
    assert store.list_account_records()[0].jobs == JobTimes(last_auto_backfill_ms=T0 + 10,
                                                            last_auto_backfill_attempt_ms=T0 + 10)

    failed = JobOutcome(ok=False, threads=2, messages=5, errors=1, duration_ms=900, error_code="timeout",
                        error_message="no answer in 30 s")
    store.update_account("acct1", run(started=T0 + 10, outcome=failed, finished=T0 + 910), NOW + 1)
    doc = store.get_account("acct1")
    assert doc["lastBackfillStatus"] == "error" and doc["lastBackfillError"] == "no answer in 30 s"
    assert doc["lastBackfillStats"] == {"threads": 2, "messages": 5, "errors": 1, "durationMs": 900}
    assert doc["lastAutoBackfillStatus"] == {"ok": False, "running": False, "errorCode": "timeout",
                                             "errorMessage": "no answer in 30 s", "durationMs": 900,
                                             "onDemand": "available"}
    assert "lastAutoBackfillSuccessAt" not in doc and "lastBackfillResult" not in doc
    assert store.list_account_records()[0].jobs == JobTimes(
        last_auto_backfill_ms=T0 + 10, last_auto_backfill_attempt_ms=T0 + 10, last_auto_backfill_ok=False)

    store.update_account("acct1", run(started=T0 + 5000), NOW + 2)
    assert store.list_account_records()[0].jobs.last_auto_backfill_ok is None  # running
    ok = JobOutcome(ok=True, threads=2, messages=7, errors=0, duration_ms=1200,
                    thread_results=((A, 7, "ok"), (B, 0, "empty")))
    store.update_account("acct1", run(started=T0 + 5000, outcome=ok, finished=T0 + 6200), NOW + 3)
    doc = store.get_account("acct1")
    assert doc["lastBackfillStatus"] == "success" and doc["lastBackfillError"] is None
    assert doc["lastBackfillStats"] == {"threads": 2, "messages": 7, "errors": 0, "durationMs": 1200}
    assert doc["lastBackfillResult"] == {"threads": 2, "messages": 7, "errors": 0, "threadResults": [
        {"chatJid": A, "messages": 7, "result": "ok"}, {"chatJid": B, "messages": 0, "result": "empty"}]}
    assert doc["lastAutoBackfillStatus"] == {"ok": True, "running": False, "threads": 2, "messages": 7,
                                             "errors": 0, "durationMs": 1200, "onDemand": "available"}
    assert doc["lastAutoBackfillSuccessAt"] == at(T0 + 6200) and doc["lastBackfillAt"] == at(T0 + 5000)
    assert doc["phone"] == "15550001111" and doc["status"] == "connecting"  # the rest is kept
    assert store.list_account_records()[0].jobs == JobTimes(
        last_auto_backfill_ms=T0 + 5000, last_auto_backfill_success_ms=T0 + 6200,
        last_auto_backfill_attempt_ms=T0 + 5000, last_auto_backfill_ok=True)

    unavailable = JobOutcome(ok=True, on_demand=False)
    store.update_account("acct1", run(started=T0 + 9000, outcome=unavailable, finished=T0 + 9000), NOW + 4)
    assert store.get_account("acct1")["lastAutoBackfillStatus"]["onDemand"] == "unavailable"


def test_a_coalesced_start_and_finish_store_the_start_too(store):
    store.create_account("acct1", None, T0)
    patch = run(started=T0 + 10).then(run(started=T0 + 10, outcome=JobOutcome(ok=True), finished=T0 + 20))
    store.update_account("acct1", patch, NOW)
    doc = store.get_account("acct1")
    assert doc["lastBackfillAt"] == doc["lastAutoBackfillAt"] == doc["lastAutoBackfillAttemptAt"] == at(T0 + 10)
    assert doc["lastBackfillStatus"] == "success"


def test_recent_sync_and_repair_fields_round_trip(store):
    store.create_account("acct1", None, T0)
    store.update_account("acct1", run(Job.RECENT_SYNC, started=T0 + 1), NOW)
    doc = store.get_account("acct1")
    assert doc["lastRecentSyncAt"] == at(T0 + 1) and "lastRecentSyncResult" not in doc
    assert "lastBackfillStatus" not in doc and "lastAutoBackfillAt" not in doc

    store.update_account("acct1", run(Job.RECENT_SYNC, started=T0 + 1, finished=T0 + 51, outcome=JobOutcome(
        ok=False, threads=3, errors=3, duration_ms=50, error_code="interrupted", error_message="lease lost")), NOW)
    assert store.get_account("acct1")["lastRecentSyncResult"] == {
        "ok": False, "threads": 3, "messages": 0, "errors": 3, "durationMs": 50, "errorCode": "interrupted",
        "errorMessage": "lease lost"}
    store.update_account("acct1", run(Job.RECENT_SYNC, started=T0 + 100, finished=T0 + 140, outcome=JobOutcome(
        ok=True, threads=4, messages=9, duration_ms=40)), NOW)
    store.update_account("acct1", AccountPatch(auto_repair_ms=T0 + 200), NOW)
    doc = store.get_account("acct1")
    assert doc["lastRecentSyncResult"] == {"ok": True, "threads": 4, "messages": 9, "errors": 0, "durationMs": 40}
    assert doc["lastRecentSyncAt"] == at(T0 + 100) and doc["lastAutoRepairAt"] == at(T0 + 200)
    assert store.list_account_records()[0].jobs == JobTimes(last_recent_sync_ms=T0 + 100,
                                                            last_auto_repair_ms=T0 + 200)


def test_job_fields_keep_fencing_and_never_create_an_account(store):
    assert store.update_account("acct1", run(), NOW) is False
    assert store.update_account("acct1", AccountPatch(auto_repair_ms=NOW), NOW) is False
    assert store.list_accounts() == []
    store.create_account("acct1", None, T0)
    lease = store.acquire_lease("acct1", "inst-1", None, NOW, 30_000)
    assert store.update_account("acct1", run(), NOW, fence=Fence("inst-1", lease.epoch))
    with pytest.raises(StaleFence):
        store.update_account("acct1", run(started=T0 + 1), NOW, fence=Fence("inst-1", lease.epoch + 1))
    assert store.get_account("acct1")["lastBackfillAt"] == at(T0)
