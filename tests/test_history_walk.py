"""actors/backfill.py HistoryWalk: the pure state machine an account actor drives through
a backfill or recent-sync run (next_request / answered / failed / cancel / take_finished /
progress / outcome). Plans and answers are built by hand; times are plain wall ms."""
from __future__ import annotations

import pytest

from wasync.actors.backfill import HistoryWalk, Request, thread_word
from wasync.actors.policy.backfill import Leg, ThreadTask
from wasync.runtime import model as m
from wasync.runtime.backfill import Direction, Job, JobOutcome, MessageRef, Progress, Trigger

ACC = "acc1"
T0 = 1_700_000_000_000  # the walk starts here
A, B, C, D = "a@s.whatsapp.net", "b@s.whatsapp.net", "c@g.us", "d@s.whatsapp.net"
BEFORE, AFTER = Direction.BEFORE, Direction.AFTER


def msg(id_: str, chat: str, ts: int, out: bool = False) -> m.Message:
    return m.Message(id=id_, account_id=ACC, client_jid=chat,
                     direction=m.Direction.OUTBOUND if out else m.Direction.INBOUND,
                     message_type=m.MessageType.TEXT, ts_client_ms=ts, sync_source=m.SyncSource.BACKFILL)


def page_before(chat: str, anchor_ts: int, n: int, tag: str = "p") -> list[m.Message]:
    """n messages older than the anchor, one second apart, newest first (the phone's order)."""
    return [msg(f"{chat}-{tag}{i}", chat, anchor_ts - 1000 * (i + 1)) for i in range(n)]


def page_after(chat: str, anchor_ts: int, n: int, tag: str = "q") -> list[m.Message]:
    """n messages newer than the anchor, one second apart, oldest first."""
    return [msg(f"{chat}-{tag}{i}", chat, anchor_ts + 1000 * (i + 1)) for i in range(n)]


def anchor(name: str, ts: int, from_me: bool = False) -> MessageRef:
    return MessageRef(name, ts, from_me)


def before(ts: int, budget: int = 100, page: int = 20, name: str = "old") -> Leg:
    return Leg(BEFORE, anchor(name, ts), budget, page)


def after(ts: int, budget: int = 20, page: int = 20, name: str = "new") -> Leg:
    return Leg(AFTER, anchor(name, ts, True), budget, page)


def walk(*tasks: ThreadTask, job: Job = Job.BACKFILL) -> HistoryWalk:
    return HistoryWalk("run1", job, Trigger.PERIODIC, tasks, T0)


def ask(w: HistoryWalk) -> Request:
    req = w.next_request()
    assert req is not None
    return req


# --- a whole walk --------------------------------------------------------------------------


def test_a_whole_walk_over_three_threads():
    ta, tb, tc = T0 - 10_000_000, T0 - 20_000_000, T0 - 30_000_000
    w = walk(ThreadTask(A, (before(ta, budget=100, page=20),)),
             ThreadTask(B, (before(tb, budget=100, page=20),)),
             ThreadTask(C, (before(tc, budget=30, page=20),)))
    assert w.total == 3 and not w.done
    asked = []

    # A: two full pages, then a short one
    req = ask(w)
    asked.append(req)
    assert req == Request(1, A, anchor("old", ta), 20, BEFORE)
    assert w.next_request() is None  # one in flight at a time
    p1 = page_before(A, ta, 20, "x")
    assert w.answered(A, p1, False)
    req = ask(w)
    asked.append(req)
    assert req == Request(2, A, anchor(p1[-1].id, p1[-1].ts_client_ms), 20, BEFORE)
    p2 = page_before(A, p1[-1].ts_client_ms, 20, "y")
    assert w.answered(A, p2, False)
    req = ask(w)
    asked.append(req)
    assert req.seq == 3 and req.anchor.id == p2[-1].id
    assert w.answered(A, page_before(A, p2[-1].ts_client_ms, 7, "z"), False)  # short: A is done
    assert w.take_finished() == [(A, 47, "ok")]

    # B: nothing older
    req = ask(w)
    asked.append(req)
    assert req == Request(4, B, anchor("old", tb), 20, BEFORE)
    assert w.answered(B, [], False)
    assert w.take_finished() == [(B, 0, "empty")]

    # C: a budget of 30: a full page, then the 10 left, then done
    req = ask(w)
    asked.append(req)
    assert (req.chat_jid, req.count) == (C, 20)
    pc = page_before(C, tc, 20)
    assert w.answered(C, pc, False)
    req = ask(w)
    asked.append(req)
    assert (req.chat_jid, req.count, req.anchor.id) == (C, 10, pc[-1].id)
    assert w.answered(C, page_before(C, pc[-1].ts_client_ms, 10, "r"), False)

    assert w.next_request() is None and w.done and w.in_flight is None
    assert [r.seq for r in asked] == [1, 2, 3, 4, 5, 6]
    assert w.take_finished() == [(C, 30, "ok")]
    assert w.results == [(A, 47, "ok"), (B, 0, "empty"), (C, 30, "ok")]
    assert w.messages == 77 and w.errors == 0
    assert w.outcome(T0 + 5_000) == JobOutcome(ok=True, threads=3, messages=77, errors=0, duration_ms=5_000,
                                               thread_results=((A, 47, "ok"), (B, 0, "empty"), (C, 30, "ok")))


def test_an_empty_walk_is_done_at_once():
    w = walk()
    assert w.done and w.next_request() is None
    assert w.outcome(T0) == JobOutcome(ok=True, threads=0, messages=0, errors=0, duration_ms=0)


# --- which answers are taken ---------------------------------------------------------------

TA = T0 - 1_000_000

NOT_TAKEN = [
    # id, chat, messages
    ("wrong_chat", B, page_before(B, TA, 3)),
    ("wrong_chat_empty", B, []),
    ("newer_than_anchor", A, page_after(A, TA, 3)),
    ("one_newer_than_anchor", A, page_before(A, TA, 3) + [msg("late", A, TA + 1)]),
]


@pytest.mark.parametrize("chat, messages", [r[1:] for r in NOT_TAKEN], ids=[r[0] for r in NOT_TAKEN])
def test_an_answer_that_does_not_match_is_not_taken_and_the_request_stays_in_flight(chat, messages):
    w = walk(ThreadTask(A, (before(TA),)), ThreadTask(B, (before(TA),)))
    req = ask(w)
    assert not w.answered(chat, messages, True)
    assert w.in_flight == req and w.next_request() is None
    assert w.messages == 0 and w.take_finished() == [] and not w.done
    # the right answer is still taken afterwards
    assert w.answered(A, page_before(A, TA, 20), False)
    assert ask(w).seq == 2


def test_an_answer_on_the_wrong_side_of_an_after_anchor_is_not_taken():
    w = walk(ThreadTask(A, (after(TA),)))
    req = ask(w)
    assert not w.answered(A, page_before(A, TA, 3), False)
    assert w.in_flight == req
    assert w.answered(A, [msg("same-second", A, TA)] + page_after(A, TA, 2), False)  # ties are on the side


def test_a_message_of_the_anchors_own_second_is_on_either_side():
    w = walk(ThreadTask(A, (before(TA),)))
    ask(w)
    assert w.answered(A, [msg("tie", A, TA)] + page_before(A, TA, 19), False)


def test_no_answer_is_taken_when_nothing_is_in_flight():
    w = walk(ThreadTask(A, (before(TA),)))
    assert not w.answered(A, page_before(A, TA, 5), False)  # not asked yet
    ask(w)
    assert w.answered(A, page_before(A, TA, 5), False)  # short: the walk is over
    assert w.done
    assert not w.answered(A, page_before(A, TA, 5), False)  # a replay
    assert w.messages == 5


def test_a_replayed_page_does_not_answer_the_next_request():
    w = walk(ThreadTask(A, (before(TA),)))
    ask(w)
    p1 = page_before(A, TA, 20)
    assert w.answered(A, p1, False)
    req2 = ask(w)
    assert not w.answered(A, p1, False)  # lies newer than the new anchor (its oldest message)
    assert w.in_flight == req2 and w.messages == 20


# --- anchors ---------------------------------------------------------------------------------

ANCHORS = [
    # id, direction, page as (id, ts, outbound) in answer order, expected next anchor
    ("before_oldest", BEFORE, [("m1", TA - 1000, False), ("m3", TA - 3000, True), ("m2", TA - 2000, False)],
     anchor("m3", TA - 3000, True)),
    ("before_tie_first_in_answer_order", BEFORE,
     [("m1", TA - 1000, False), ("t1", TA - 5000, False), ("t2", TA - 5000, True), ("t3", TA - 5000, False)],
     anchor("t1", TA - 5000, False)),
    ("before_tie_first_outbound", BEFORE, [("t2", TA - 5000, True), ("t1", TA - 5000, False)],
     anchor("t2", TA - 5000, True)),
    ("after_newest", AFTER, [("m1", TA + 1000, False), ("m3", TA + 3000, True), ("m2", TA + 2000, False)],
     anchor("m3", TA + 3000, True)),
    ("after_tie_last_in_answer_order", AFTER,
     [("t1", TA + 5000, True), ("t2", TA + 5000, False), ("t3", TA + 5000, True), ("m1", TA + 1000, False)],
     anchor("t3", TA + 5000, True)),
    ("after_tie_at_anchor_second", AFTER, [("t1", TA, False), ("t2", TA, False)], anchor("t2", TA, False)),
]


@pytest.mark.parametrize("direction, page, expected", [r[1:] for r in ANCHORS], ids=[r[0] for r in ANCHORS])
def test_the_anchor_moves_to_the_end_of_each_page(direction, page, expected):
    w = walk(ThreadTask(A, (Leg(direction, anchor("start", TA), budget=100, page=len(page)),)))
    ask(w)
    assert w.answered(A, [msg(i, A, ts, out) for i, ts, out in page], False)
    req = ask(w)  # a full page: the leg goes on from the new anchor
    assert (req.anchor, req.direction, req.count) == (expected, direction, len(page))


def test_anchors_walk_back_page_after_page():
    w = walk(ThreadTask(A, (before(TA, budget=60, page=20),)))
    at = anchor("old", TA)
    for n in range(3):
        req = ask(w)
        assert req.anchor == at
        page = page_before(A, at.ts_ms, 20, f"p{n}")
        assert w.answered(A, page, False)
        at = anchor(page[-1].id, page[-1].ts_client_ms)
    assert w.done and w.results == [(A, 60, "ok")]


def test_the_second_leg_starts_from_its_own_anchor():
    """A recent-sync with a forward page: AFTER from the newest, then BEFORE from the newest."""
    newest = T0 - 60_000
    w = walk(ThreadTask(A, (after(newest, budget=20, page=20), before(newest, budget=20, page=20, name="new"))),
             job=Job.RECENT_SYNC)
    r1 = ask(w)
    assert (r1.direction, r1.anchor.ts_ms) == (AFTER, newest)
    assert w.answered(A, page_after(A, newest, 4), False)  # short: the AFTER leg is over
    r2 = ask(w)
    assert r2 == Request(2, A, anchor("new", newest), 20, BEFORE)  # not the AFTER page's newest
    assert w.answered(A, page_before(A, newest, 20), False)  # the budget: over
    assert w.done and w.results == [(A, 24, "ok")]


# --- complete ----------------------------------------------------------------------------------


def test_complete_on_a_before_page_ends_that_leg():
    w = walk(ThreadTask(A, (before(TA, budget=100, page=20),)), ThreadTask(B, (before(TA),)))
    ask(w)
    assert w.answered(A, page_before(A, TA, 20), True)  # a full page, but nothing older exists
    assert w.take_finished() == [(A, 20, "complete")]
    assert ask(w).chat_jid == B


def test_complete_on_an_empty_before_page():
    w = walk(ThreadTask(A, (before(TA),)))
    ask(w)
    assert w.answered(A, [], True)
    assert w.results == [(A, 0, "complete")]


def test_complete_on_an_after_page_does_not_end_the_leg():
    w = walk(ThreadTask(A, (after(TA, budget=40, page=20), before(TA, budget=20, page=20))))
    ask(w)
    p = page_after(A, TA, 20)
    assert w.answered(A, p, True)  # "complete" speaks of older history: the AFTER leg goes on
    req = ask(w)
    assert (req.direction, req.anchor.id, req.count) == (AFTER, p[-1].id, 20)
    assert w.answered(A, page_after(A, p[-1].ts_client_ms, 3, "r"), True)  # short: over with "ok"
    req = ask(w)
    assert req.direction is BEFORE  # the BEFORE leg still runs
    assert w.answered(A, page_before(A, TA, 2), False)
    assert w.results == [(A, 25, "ok")]


def test_complete_after_an_after_leg_wins_the_thread_word():
    w = walk(ThreadTask(A, (after(TA), before(TA))))
    ask(w)
    assert w.answered(A, page_after(A, TA, 3), False)
    ask(w)
    assert w.answered(A, page_before(A, TA, 20), True)
    assert w.results == [(A, 23, "complete")]


# --- failures ------------------------------------------------------------------------------------


def test_failed_ends_the_thread_with_the_word_and_counts_an_error():
    w = walk(ThreadTask(A, (before(TA),)), ThreadTask(B, (before(TA),)))
    r1 = ask(w)
    assert w.answered(A, page_before(A, TA, 20), False)
    r2 = ask(w)
    assert not w.failed(r1.seq, "timeout")  # stale: already answered
    assert w.in_flight == r2 and w.errors == 0
    assert w.failed(r2.seq, "timeout")
    assert w.errors == 1 and w.in_flight is None
    assert w.take_finished() == [(A, 20, "timeout")]  # what came before the failure still counts
    assert not w.failed(r2.seq, "timeout")  # twice: no longer in flight
    assert w.errors == 1
    r3 = ask(w)
    assert r3.chat_jid == B and r3.seq == 3
    assert not w.failed(99, "error: boom")  # never sent
    assert w.failed(r3.seq, "error: boom")
    assert w.done and w.results == [(A, 20, "timeout"), (B, 0, "error: boom")] and w.errors == 2


def test_failed_when_nothing_is_in_flight():
    w = walk(ThreadTask(A, (before(TA),)))
    assert not w.failed(1, "timeout")
    assert w.errors == 0 and w.results == []


def test_a_late_answer_to_a_failed_request_is_not_taken():
    w = walk(ThreadTask(A, (before(TA),)), ThreadTask(B, (before(TA),)))
    r1 = ask(w)
    assert w.failed(r1.seq, "timeout")
    ask(w)
    assert not w.answered(A, page_before(A, TA, 5), False)  # B is in flight now
    assert w.in_flight.chat_jid == B and w.messages == 0


@pytest.mark.parametrize("word", [
    pytest.param("timeout", id="timeout"),
    pytest.param("error: boom", id="error"),
    # whatever the word: the thread's result says why it ended, not how its first leg went
    pytest.param("not_connected", id="not_connected"),
    pytest.param("rate_limited: slow down", id="rate_limited"),
    pytest.param("interrupted", id="interrupted"),
])
def test_a_failure_on_the_second_leg_is_the_threads_word(word):
    w = walk(ThreadTask(A, (after(TA), before(TA))))
    ask(w)
    assert w.answered(A, page_after(A, TA, 3), False)  # the AFTER leg: "ok"
    req = ask(w)
    assert w.failed(req.seq, word)
    assert w.results == [(A, 3, word)] and w.errors == 1


THREAD_WORDS = [
    ([], "empty"),
    (["ok"], "ok"),
    (["empty"], "empty"),
    (["empty", "ok"], "ok"),
    (["ok", "empty"], "ok"),
    (["empty", "complete"], "complete"),
    (["unavailable"], "unavailable"),
]


@pytest.mark.parametrize("words, expected", THREAD_WORDS, ids=["+".join(w) or "none" for w, _ in THREAD_WORDS])
def test_thread_word(words, expected):
    assert thread_word(words) == expected


# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_ends_the_thread_in_flight_and_the_pending_ones():
    w = walk(ThreadTask(A, (before(TA),)), ThreadTask(B, (before(TA),)), ThreadTask(C, (before(TA),)),
             ThreadTask(D, (), skip="idle"))
    assert w.take_finished() == [(D, 0, "idle")]
    ask(w)
    assert w.answered(A, page_before(A, TA, 5), False)
    ask(w)
    assert w.answered(B, page_before(B, TA, 20), False)
    ask(w)  # B's second page in flight
    w.cancel("cancelled")
    assert w.done and w.in_flight is None and w.next_request() is None
    assert w.take_finished() == [(A, 5, "ok"), (B, 20, "cancelled"), (C, 0, "cancelled")]
    assert w.take_finished() == []
    assert w.errors == 1  # the request in flight; pending threads were never asked
    out = w.outcome(T0 + 1)
    assert out.threads == 4 and out.messages == 25 and out.errors == 1
    assert out.thread_results == ((D, 0, "idle"), (A, 5, "ok"), (B, 20, "cancelled"), (C, 0, "cancelled"))


def test_cancel_before_anything_was_asked():
    w = walk(ThreadTask(A, (before(TA),)), ThreadTask(B, (before(TA),)))
    w.cancel("interrupted")
    assert w.done and w.next_request() is None and w.errors == 0
    assert w.take_finished() == [(A, 0, "interrupted"), (B, 0, "interrupted")]


def test_cancel_after_the_walk_is_over_changes_nothing():
    w = walk(ThreadTask(A, (before(TA),)))
    ask(w)
    assert w.answered(A, [], False)
    w.take_finished()
    w.cancel("cancelled")
    assert w.results == [(A, 0, "empty")] and w.take_finished() == [] and w.errors == 0


def test_cancel_between_pages_ends_the_thread_being_walked():
    # Between answered() and the next next_request() the thread is neither in flight nor pending.
    w = walk(ThreadTask(A, (before(TA),)), ThreadTask(B, (before(TA),)))
    ask(w)
    assert w.answered(A, page_before(A, TA, 20), False)  # a full page: A goes on
    w.cancel("cancelled")
    assert w.next_request() is None
    assert w.done
    assert w.take_finished() == [(A, 20, "cancelled"), (B, 0, "cancelled")]


# --- reporting -------------------------------------------------------------------------------------


def test_skipped_tasks_are_results_at_once_and_reported_once():
    w = walk(ThreadTask(A, (), skip="idle"), ThreadTask(B, (before(TA),)), ThreadTask(C, (), skip="no_anchor"),
             ThreadTask(D, ()))
    assert w.results == [(A, 0, "idle"), (C, 0, "no_anchor"), (D, 0, "empty")]  # no word: "empty"
    assert w.progress() == Progress("run1", Job.BACKFILL, Trigger.PERIODIC, T0, 4, 3, 0)
    assert w.take_finished() == [(A, 0, "idle"), (C, 0, "no_anchor"), (D, 0, "empty")]
    assert w.take_finished() == []
    req = ask(w)
    assert req.chat_jid == B  # skipped threads are never asked
    assert w.answered(B, page_before(B, TA, 2), False)
    assert w.take_finished() == [(B, 2, "ok")]
    assert w.take_finished() == [] and w.done


def test_a_walk_of_only_skipped_tasks_is_done_and_ok():
    w = walk(ThreadTask(A, (), skip="complete"), ThreadTask(B, (), skip="idle"))
    assert w.done and w.next_request() is None
    out = w.outcome(T0 + 10)
    assert out.ok and out.threads == 2 and out.errors == 0
    assert out.thread_results == ((A, 0, "complete"), (B, 0, "idle"))


def test_take_finished_returns_each_thread_once():
    w = walk(*(ThreadTask(x, (before(TA),)) for x in (A, B, C)))
    seen = []
    for x in (A, B, C):
        ask(w)
        assert w.take_finished() == []  # nothing new while in flight
        assert w.answered(x, page_before(x, TA, 1), False)
        seen += w.take_finished()
        assert w.take_finished() == []
    assert seen == [(A, 1, "ok"), (B, 1, "ok"), (C, 1, "ok")]


def test_progress_counts():
    w = walk(ThreadTask(A, (before(TA),)), ThreadTask(B, (before(TA),)), ThreadTask(C, (), skip="idle"),
             job=Job.RECENT_SYNC)
    assert w.progress() == Progress("run1", Job.RECENT_SYNC, Trigger.PERIODIC, T0, 3, 1, 0)
    ask(w)
    assert w.answered(A, page_before(A, TA, 20), False)
    assert w.progress() == Progress("run1", Job.RECENT_SYNC, Trigger.PERIODIC, T0, 3, 1, 20)  # A goes on
    ask(w)
    assert w.answered(A, page_before(A, TA - 20_000, 4), False)
    assert w.progress().threads_done == 2 and w.progress().messages == 24
    req = ask(w)
    w.failed(req.seq, "timeout")
    assert w.progress() == Progress("run1", Job.RECENT_SYNC, Trigger.PERIODIC, T0, 3, 3, 24)


# --- outcome -----------------------------------------------------------------------------------------


def run_walk(chats_pages: dict[str, object]) -> HistoryWalk:
    """Each chat gets one BEFORE request answered with n messages (a short page ends it) or
    failed with a word."""
    w = walk(*(ThreadTask(c, (before(TA),)) for c in chats_pages))
    for c, what in chats_pages.items():
        req = ask(w)
        assert req.chat_jid == c
        if isinstance(what, int):
            assert w.answered(c, page_before(c, TA, what), False)
        else:
            assert w.failed(req.seq, what)
    assert w.done
    return w


OUTCOMES = [
    # id, what each thread got, ok, messages, errors
    ("all_ok", {A: 3, B: 5}, True, 8, 0),
    ("one_of_two_failed", {A: 3, B: "timeout"}, True, 3, 1),
    ("two_of_three_failed", {A: "timeout", B: 0, C: "error: x"}, True, 0, 2),
    ("all_failed", {A: "timeout", B: "error: x"}, False, 0, 2),
    ("the_only_thread_failed", {A: "timeout"}, False, 0, 1),
    ("all_empty_is_ok", {A: 0, B: 0}, True, 0, 0),
]


@pytest.mark.parametrize("chats_pages, ok, messages, errors", [r[1:] for r in OUTCOMES], ids=[r[0] for r in OUTCOMES])
def test_outcome(chats_pages, ok, messages, errors):
    w = run_walk(chats_pages)
    out = w.outcome(T0 + 12_345)
    results = tuple((c, what if isinstance(what, int) else 0, "empty" if what == 0 else
                     "ok" if isinstance(what, int) else what) for c, what in chats_pages.items())
    expected = JobOutcome(ok=ok, threads=len(chats_pages), messages=messages, errors=errors, duration_ms=12_345,
                          error_code=None if ok else "all_threads_failed",
                          error_message=None if ok else f"every request failed ({errors})",
                          thread_results=results)
    assert out == expected


def test_outcome_duration_never_negative():
    w = walk(ThreadTask(A, (), skip="idle"))
    assert w.outcome(T0 - 5_000).duration_ms == 0
    assert w.outcome(T0).duration_ms == 0
    assert w.outcome(T0 + 1).duration_ms == 1


def test_outcome_is_not_ok_when_every_request_failed_though_some_threads_were_skipped():
    # Skipped threads asked nothing: a run whose every request failed is a failure (the account
    # retries after the attempt backoff, not the 6 h success cooldown).
    w = walk(ThreadTask(A, (), skip="complete"), ThreadTask(B, (before(TA),)), ThreadTask(C, (before(TA),)))
    for _ in range(2):
        assert w.failed(ask(w).seq, "timeout")
    assert w.done and w.errors == 2 and w.messages == 0
    out = w.outcome(T0 + 60_000)
    assert not out.ok
    assert out.error_code == "all_threads_failed"
