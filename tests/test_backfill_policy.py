"""actors/policy/backfill.py: table tests on a fake clock (plain integers of wall ms) for
which accounts get an automatic backfill or recent-sync, which threads a run visits and
how far, and when a leg of a walk ends (SPEC §3 AUTO_BACKFILL_*, WHATSAPP_BACKFILL_*,
RECENT_SYNC_*, AUTO_REPAIR_*)."""
from __future__ import annotations

import random

import pytest

from wasync.actors.policy.backfill import (
    DAY_MS, ON_DEMAND_MAX, AutoRules, BackfillRules, Leg, RecentRules, ThreadTask, backfill_plan, by_recency,
    connect_delay_s, later_times, leg_over, page_size, pick_auto_backfills, pick_recent_syncs, recent_sync_plan, repair_due,
    skip_reason,
)
from wasync.runtime.account import JobTimes
from wasync.runtime.backfill import Direction, MessageRef, ThreadHistory

NOW = 1_700_000_000_000  # the fake clock: wall ms
MIN = 60_000
COOLDOWN = 360 * MIN  # WHATSAPP_BACKFILL_COOLDOWN_MINUTES default
BACKOFF = 600_000  # AUTO_BACKFILL_ATTEMPT_BACKOFF_MS default
RULES = AutoRules(cooldown_ms=COOLDOWN, attempt_backoff_ms=BACKOFF, max_accounts_per_tick=3, concurrency=2)


def ok_run(started_ago: int, ok: bool | None = True, attempt_ago: int | None = None) -> JobTimes:
    """The times a finished (ok True/False) or unfinished (ok None) run left behind."""
    start = NOW - started_ago
    return JobTimes(last_auto_backfill_ms=start,
                    last_auto_backfill_success_ms=start if ok else None,
                    last_auto_backfill_attempt_ms=start if attempt_ago is None else NOW - attempt_ago,
                    last_auto_backfill_ok=ok)


# --- skip_reason: cooldown after success, backoff after any attempt -----------------------

SKIP = [
    # id, times, expected reason
    ("never_run", JobTimes(), None),
    ("success_just_inside_cooldown", ok_run(COOLDOWN - 1), "cooldown"),
    ("success_exactly_at_cooldown", ok_run(COOLDOWN), None),
    ("success_after_cooldown", ok_run(COOLDOWN + 1), None),
    ("success_a_moment_ago", ok_run(1), "cooldown"),
    ("failure_just_inside_backoff", ok_run(BACKOFF - 1, ok=False), "backoff"),
    ("failure_exactly_at_backoff", ok_run(BACKOFF, ok=False), None),
    ("failure_after_backoff", ok_run(BACKOFF + 1, ok=False), None),
    ("unfinished_just_inside_backoff", ok_run(BACKOFF - 1, ok=None), "backoff"),
    ("unfinished_exactly_at_backoff", ok_run(BACKOFF, ok=None), None),
    ("unfinished_after_backoff", ok_run(3 * BACKOFF, ok=None), None),
    # both rules: a success still inside its cooldown, then a later attempt failed
    ("success_in_cooldown_then_failure_in_backoff",
     JobTimes(NOW - 5 * MIN, NOW - 60 * MIN, NOW - 5 * MIN, False), "backoff"),
    ("success_in_cooldown_then_failure_past_backoff",  # the last status is a failure: the backoff rules
     JobTimes(NOW - 20 * MIN, NOW - 60 * MIN, NOW - 20 * MIN, False), None),
    ("success_in_cooldown_and_attempt_in_backoff",  # both hold: cooldown is named first
     JobTimes(NOW - 5 * MIN, NOW - 5 * MIN, NOW - 5 * MIN, True), "cooldown"),
    ("success_past_cooldown_but_new_attempt_running",
     JobTimes(NOW - 2 * MIN, NOW - COOLDOWN - 1, NOW - 2 * MIN, None), "backoff"),
    # no attempt time stored (an older writer): the run's start stands in for it
    ("no_attempt_time_start_inside_backoff",
     JobTimes(last_auto_backfill_ms=NOW - BACKOFF + 1, last_auto_backfill_ok=False), "backoff"),
    ("no_attempt_time_start_past_backoff",
     JobTimes(last_auto_backfill_ms=NOW - BACKOFF, last_auto_backfill_ok=False), None),
    ("attempt_newer_than_start",  # a later attempt that never got to start a run
     JobTimes(last_auto_backfill_ms=NOW - 3 * BACKOFF, last_auto_backfill_attempt_ms=NOW - 1,
              last_auto_backfill_ok=False), "backoff"),
]


@pytest.mark.parametrize("times, expected", [r[1:] for r in SKIP], ids=[r[0] for r in SKIP])
def test_skip_reason(times, expected):
    assert skip_reason(times, NOW, RULES) == expected


def test_skip_reason_walks_the_clock_past_both_rules():
    """A success, then the clock moves: cooldown until exactly COOLDOWN later, then free."""
    times = ok_run(0)
    seen = {t: skip_reason(times, NOW + t, RULES) for t in (0, BACKOFF - 1, BACKOFF, COOLDOWN - 1, COOLDOWN)}
    assert seen == {0: "cooldown", BACKOFF - 1: "cooldown", BACKOFF: "cooldown", COOLDOWN - 1: "cooldown",
                    COOLDOWN: None}


# --- pick_auto_backfills ---------------------------------------------------------------

NEVER = JobTimes()
OLD1 = ok_run(COOLDOWN + 3 * MIN)  # eligible, oldest
OLD2 = ok_run(COOLDOWN + 2 * MIN)
OLD3 = ok_run(COOLDOWN + 1 * MIN)  # eligible, newest
FAILED_OLD = ok_run(BACKOFF + 1, ok=False)  # eligible: started at NOW - BACKOFF - 1 (newer than OLD*)
COOLING = ok_run(MIN)  # not eligible
BACKING_OFF = ok_run(MIN, ok=False)  # not eligible

PICK = [
    # id, candidates, running, rules, expected
    ("never_run_first_then_oldest",
     [("c", OLD2), ("b", NEVER), ("d", OLD1), ("e", OLD3)], 0,
     AutoRules(COOLDOWN, BACKOFF, 3, 5), ["b", "d", "c"]),
    ("never_run_ties_by_id", [("z", NEVER), ("a", NEVER), ("m", NEVER)], 0, AutoRules(COOLDOWN, BACKOFF, 3, 5),
     ["a", "m", "z"]),
    ("same_time_ties_by_id", [("y", OLD1), ("x", OLD1), ("w", OLD2)], 0, AutoRules(COOLDOWN, BACKOFF, 3, 5),
     ["x", "y", "w"]),
    ("ineligible_left_out", [("a", COOLING), ("b", BACKING_OFF), ("c", OLD2), ("d", FAILED_OLD)], 0,
     AutoRules(COOLDOWN, BACKOFF, 3, 5), ["c", "d"]),
    ("per_tick_limit", [(f"a{n}", NEVER) for n in range(6)], 0, AutoRules(COOLDOWN, BACKOFF, 3, 10),
     ["a0", "a1", "a2"]),
    ("concurrency_slots", [(f"a{n}", NEVER) for n in range(6)], 0, AutoRules(COOLDOWN, BACKOFF, 3, 2),
     ["a0", "a1"]),
    ("running_takes_slots", [(f"a{n}", NEVER) for n in range(6)], 1, AutoRules(COOLDOWN, BACKOFF, 3, 2),
     ["a0"]),
    ("running_takes_slots_under_tick_limit", [(f"a{n}", NEVER) for n in range(6)], 3,
     AutoRules(COOLDOWN, BACKOFF, 3, 5), ["a0", "a1"]),
    ("full_nothing", [(f"a{n}", NEVER) for n in range(6)], 2, AutoRules(COOLDOWN, BACKOFF, 3, 2), []),
    ("over_full_nothing", [(f"a{n}", NEVER) for n in range(6)], 4, AutoRules(COOLDOWN, BACKOFF, 3, 2), []),
    ("nobody_eligible", [("a", COOLING), ("b", BACKING_OFF)], 0, RULES, []),
    ("no_candidates", [], 0, RULES, []),
]


@pytest.mark.parametrize("candidates, running, rules, expected", [r[1:] for r in PICK], ids=[r[0] for r in PICK])
def test_pick_auto_backfills(candidates, running, rules, expected):
    assert pick_auto_backfills(candidates, NOW, rules, running) == expected


def test_pick_auto_backfills_takes_an_iterator_and_the_order_of_candidates_does_not_matter():
    cands = [("c", OLD2), ("b", NEVER), ("d", OLD1), ("e", OLD3), ("f", COOLING)]
    rules = AutoRules(COOLDOWN, BACKOFF, 10, 10)
    assert pick_auto_backfills(iter(cands), NOW, rules, 0) == ["b", "d", "c", "e"]
    assert pick_auto_backfills(reversed(cands), NOW, rules, 0) == ["b", "d", "c", "e"]


# --- pick_recent_syncs: the interval with a tenth of grace -------------------------------

IV = 120_000  # RECENT_SYNC_INTERVAL_MS default; due from 108_000 on


def rs(ago):
    return JobTimes(last_recent_sync_ms=None if ago is None else NOW - ago)


RECENT = [
    # id, candidates, slots, expected
    ("never_synced", [("a", rs(None))], 1, ["a"]),
    ("just_inside_grace", [("a", rs(IV * 9 // 10 - 1))], 1, []),
    ("exactly_at_grace", [("a", rs(IV * 9 // 10))], 1, ["a"]),
    ("a_whole_interval", [("a", rs(IV))], 1, ["a"]),
    ("a_moment_ago", [("a", rs(1))], 1, []),
    ("just_now", [("a", rs(0))], 1, []),
    ("never_first_then_oldest", [("c", rs(IV)), ("b", rs(3 * IV)), ("z", rs(None)), ("a", rs(2 * IV))], 4,
     ["z", "b", "a", "c"]),
    ("ties_by_id", [("y", rs(IV)), ("x", rs(IV)), ("q", rs(None)), ("p", rs(None))], 4, ["p", "q", "x", "y"]),
    ("slots_limit", [("c", rs(IV)), ("b", rs(3 * IV)), ("z", rs(None)), ("a", rs(2 * IV))], 2, ["z", "b"]),
    ("not_due_left_out", [("c", rs(IV)), ("b", rs(IV // 2)), ("a", rs(None))], 5, ["a", "c"]),
    ("no_slots", [("a", rs(None))], 0, []),
    ("negative_slots", [("a", rs(None))], -1, []),
]


@pytest.mark.parametrize("candidates, slots, expected", [r[1:] for r in RECENT], ids=[r[0] for r in RECENT])
def test_pick_recent_syncs(candidates, slots, expected):
    assert pick_recent_syncs(candidates, NOW, IV, slots) == expected


# --- connect delay, repair ---------------------------------------------------------------


def test_connect_delay_is_always_within_10_and_40_seconds():
    delays = [connect_delay_s(random.Random(seed)) for seed in range(2000)]
    assert all(10.0 <= d <= 40.0 for d in delays)
    assert min(delays) < 12.0 and max(delays) > 38.0  # spread over the whole window, not a storm
    rng = random.Random(7)
    assert len({connect_delay_s(rng) for _ in range(100)}) == 100


def test_connect_delay_is_reproducible_per_seed():
    assert connect_delay_s(random.Random(42)) == connect_delay_s(random.Random(42))


REPAIR_COOLDOWN = 60 * MIN
REPAIR = [
    ("never_repaired", None, True),
    ("just_inside_cooldown", REPAIR_COOLDOWN - 1, False),
    ("exactly_at_cooldown", REPAIR_COOLDOWN, True),
    ("after_cooldown", REPAIR_COOLDOWN + 1, True),
    ("just_now", 0, False),
]


@pytest.mark.parametrize("ago, expected", [r[1:] for r in REPAIR], ids=[r[0] for r in REPAIR])
def test_repair_due(ago, expected):
    times = JobTimes(last_auto_repair_ms=None if ago is None else NOW - ago)
    assert repair_due(times, NOW, REPAIR_COOLDOWN) is expected


# --- backfill_plan -------------------------------------------------------------------------

ACC = "acc1"


def ref(name: str, ts: int, from_me: bool = False) -> MessageRef:
    return MessageRef(name, ts, from_me)


def th(chat: str, last_ago: int | None, *, stored: int = 10, complete: bool = False,
       empty: bool = False) -> ThreadHistory:
    """A thread whose newest stored message is `last_ago` before NOW and whose oldest is
    a day before that; `empty`: nothing stored (no cursors)."""
    last = None if last_ago is None else NOW - last_ago
    if empty:
        return ThreadHistory(ACC, chat, last, None, None, 0, complete)
    newest_ts = NOW - 10 * DAY_MS if last is None else last
    return ThreadHistory(ACC, chat, last, ref(f"{chat}-old", newest_ts - DAY_MS), ref(f"{chat}-new", newest_ts, True),
                         stored, complete)


def chats(tasks):
    return [t.chat_jid for t in tasks]


BF = BackfillRules(threads=50, count=100, page=20)


def test_backfill_plan_most_recent_first_with_legs():
    threads = [th("b", 3 * MIN), th("a", 1 * MIN), th("c", 2 * MIN), th("n", None)]
    tasks = backfill_plan(threads, NOW, BF, can_after=False)
    assert chats(tasks) == ["a", "c", "b", "n"]  # no last message time: last
    a = threads[1]
    assert tasks[0] == ThreadTask("a", (Leg(Direction.BEFORE, a.oldest, 100, 20),))
    assert all(t.skip is None and len(t.legs) == 1 for t in tasks)


def test_by_recency_ties_by_chat():
    threads = [th("b", MIN), th("a", MIN), th("d", None), th("c", None)]
    assert chats(by_recency(threads)) == ["a", "b", "c", "d"]


def test_backfill_plan_with_after_first_then_before():
    t = th("a", MIN)
    (task,) = backfill_plan([t], NOW, BF, can_after=True)
    assert task == ThreadTask("a", (Leg(Direction.AFTER, t.newest, 20, 20), Leg(Direction.BEFORE, t.oldest, 100, 20)))


@pytest.mark.parametrize("limit, expected", [(2, ["a", "c"]), (1, ["a"]), (0, []), (10, ["a", "c", "b"])],
                         ids=["two", "one", "zero", "more_than_threads"])
def test_backfill_plan_thread_limit(limit, expected):
    threads = [th("b", 3 * MIN), th("a", 1 * MIN), th("c", 2 * MIN)]
    rules = BackfillRules(threads=limit, count=100, page=20)
    assert chats(backfill_plan(threads, NOW, rules, can_after=False)) == expected


IDLE = [
    # id, last message ago (None: unknown), max_days, expected skip
    ("no_max_days", 400 * DAY_MS, None, None),
    ("no_max_days_no_time", None, None, None),
    ("inside", 7 * DAY_MS - 1, 7, None),
    ("exactly_at_limit", 7 * DAY_MS, 7, None),
    ("just_past_limit", 7 * DAY_MS + 1, 7, "idle"),
    ("long_idle", 30 * DAY_MS, 7, "idle"),
    ("no_last_message_time", None, 7, "idle"),
]


@pytest.mark.parametrize("ago, max_days, skip", [r[1:] for r in IDLE], ids=[r[0] for r in IDLE])
def test_backfill_plan_max_days_idle_skip(ago, max_days, skip):
    rules = BackfillRules(threads=50, count=100, page=20, max_days=max_days)
    (task,) = backfill_plan([th("a", ago)], NOW, rules, can_after=True)
    assert task.skip == skip
    assert (task.legs == ()) == (skip is not None)


def test_backfill_plan_idle_threads_still_take_a_place_in_the_limit():
    rules = BackfillRules(threads=2, count=100, page=20, max_days=1)
    tasks = backfill_plan([th("a", MIN), th("old", 2 * DAY_MS), th("c", 3 * DAY_MS)], NOW, rules, can_after=False)
    assert [(t.chat_jid, t.skip) for t in tasks] == [("a", None), ("old", "idle")]


COMPLETE = [
    # id, complete, can_after, expected leg directions, skip
    ("incomplete_before_only", False, False, [Direction.BEFORE], None),
    ("incomplete_after_then_before", False, True, [Direction.AFTER, Direction.BEFORE], None),
    ("complete_nothing_to_ask", True, False, [], "complete"),
    ("complete_still_after", True, True, [Direction.AFTER], None),
]


@pytest.mark.parametrize("complete, can_after, directions, skip", [r[1:] for r in COMPLETE],
                         ids=[r[0] for r in COMPLETE])
def test_backfill_plan_complete_threads(complete, can_after, directions, skip):
    (task,) = backfill_plan([th("a", MIN, complete=complete)], NOW, BF, can_after=can_after)
    assert [leg.direction for leg in task.legs] == directions
    assert task.skip == skip


@pytest.mark.parametrize("can_after", [False, True], ids=["before_only", "can_after"])
def test_backfill_plan_no_anchor_for_threads_with_nothing_stored(can_after):
    tasks = backfill_plan([th("a", MIN, empty=True), th("b", 2 * MIN)], NOW, BF, can_after=can_after)
    assert tasks[0] == ThreadTask("a", (), skip="no_anchor")
    assert tasks[1].skip is None and tasks[1].legs


PAGES = [
    # id, rules page, rules count, expected page, before budget
    ("page_as_configured", 20, 100, 20, 100),
    ("page_at_cap", 50, 100, 50, 100),
    ("page_capped_at_50", 80, 500, ON_DEMAND_MAX, 500),
    ("page_zero_becomes_one", 0, 100, 1, 100),
    ("page_larger_than_count", 30, 10, 30, 10),
]


@pytest.mark.parametrize("page, count, want_page, budget", [r[1:] for r in PAGES], ids=[r[0] for r in PAGES])
def test_backfill_plan_page_and_budget(page, count, want_page, budget):
    (task,) = backfill_plan([th("a", MIN)], NOW, BackfillRules(50, count, page), can_after=True)
    after, before = task.legs
    assert (after.page, after.budget) == (want_page, want_page)  # the AFTER leg: one page
    assert (before.page, before.budget) == (want_page, budget)  # the BEFORE leg: budget = count
    assert ON_DEMAND_MAX == 50


# --- recent_sync_plan ----------------------------------------------------------------------

LOOKBACK = 21_600_000  # RECENT_SYNC_LOOKBACK_MS default
RS = RecentRules(lookback_ms=LOOKBACK, threads=30, messages=20)

LOOK = [
    # id, last message ago (None: unknown), included
    ("recent", MIN, True),
    ("just_inside", LOOKBACK - 1, True),
    ("exactly_at_lookback", LOOKBACK, True),
    ("just_outside", LOOKBACK + 1, False),
    ("no_last_message_time", None, False),
]


@pytest.mark.parametrize("ago, included", [r[1:] for r in LOOK], ids=[r[0] for r in LOOK])
def test_recent_sync_plan_lookback(ago, included):
    assert chats(recent_sync_plan([th("a", ago)], NOW, RS, can_after=False)) == (["a"] if included else [])


def test_recent_sync_plan_most_recent_first_and_thread_limit():
    threads = [th("b", 3 * MIN), th("a", 1 * MIN), th("old", LOOKBACK + 1), th("c", 2 * MIN), th("d", 4 * MIN)]
    assert chats(recent_sync_plan(threads, NOW, RS, can_after=False)) == ["a", "c", "b", "d"]
    rules = RecentRules(lookback_ms=LOOKBACK, threads=2, messages=20)
    assert chats(recent_sync_plan(threads, NOW, rules, can_after=False)) == ["a", "c"]
    # the limit applies to active threads only: an old thread takes no place
    rules = RecentRules(lookback_ms=LOOKBACK, threads=4, messages=20)
    assert chats(recent_sync_plan(threads, NOW, rules, can_after=False)) == ["a", "c", "b", "d"]


RS_LEGS = [
    # id, messages, can_after, expected legs as (direction, budget, page)
    ("before_only", 20, False, [(Direction.BEFORE, 20, 20)]),
    ("after_first", 20, True, [(Direction.AFTER, 20, 20), (Direction.BEFORE, 20, 20)]),
    ("big_budget_page_capped", 120, False, [(Direction.BEFORE, 120, 50)]),
    ("big_budget_after_one_page", 120, True, [(Direction.AFTER, 50, 50), (Direction.BEFORE, 120, 50)]),
]


@pytest.mark.parametrize("messages, can_after, legs", [r[1:] for r in RS_LEGS], ids=[r[0] for r in RS_LEGS])
def test_recent_sync_plan_legs_anchor_on_the_newest(messages, can_after, legs):
    t = th("a", MIN, complete=True)  # complete does not matter: the gap is behind the newest message
    (task,) = recent_sync_plan([t], NOW, RecentRules(LOOKBACK, 30, messages), can_after=can_after)
    assert task.skip is None
    assert [(leg.direction, leg.budget, leg.page) for leg in task.legs] == legs
    assert all(leg.anchor == t.newest for leg in task.legs)


def test_recent_sync_plan_no_anchor():
    tasks = recent_sync_plan([th("a", MIN, empty=True), th("b", 2 * MIN)], NOW, RS, can_after=True)
    assert tasks[0] == ThreadTask("a", (), skip="no_anchor")
    assert len(tasks[1].legs) == 2


# --- leg_over, page_size -------------------------------------------------------------------

LEG = Leg(Direction.BEFORE, ref("m", NOW), budget=100, page=20)

OVER = [
    # id, asked, got, fetched (this answer included), complete, expected
    ("complete", 20, 20, 20, True, "complete"),
    ("complete_even_if_empty", 20, 0, 0, True, "complete"),
    ("complete_on_short_page", 20, 5, 45, True, "complete"),
    ("empty_first_page", 20, 0, 0, False, "empty"),
    ("empty_later_page", 20, 0, 40, False, "ok"),
    ("short_page", 20, 19, 59, False, "ok"),
    ("short_first_page", 20, 1, 1, False, "ok"),
    ("budget_reached", 20, 20, 100, False, "ok"),
    ("budget_overshot", 20, 25, 105, False, "ok"),
    ("last_partial_page_full", 10, 10, 100, False, "ok"),
    ("continue_first_page", 20, 20, 20, False, None),
    ("continue_mid_walk", 20, 20, 80, False, None),
    ("more_than_asked_continue", 20, 30, 30, False, None),
]


@pytest.mark.parametrize("asked, got, fetched, complete, expected", [r[1:] for r in OVER], ids=[r[0] for r in OVER])
def test_leg_over(asked, got, fetched, complete, expected):
    assert leg_over(LEG, asked, got, fetched, complete) == expected


PAGE = [
    # id, leg budget, page, fetched, expected
    ("fresh", 100, 20, 0, 20),
    ("mid", 100, 20, 60, 20),
    ("exactly_one_page_left", 100, 20, 80, 20),
    ("partial_page_left", 100, 20, 90, 10),
    ("one_left", 100, 20, 99, 1),
    ("budget_spent_still_one", 100, 20, 100, 1),
    ("overshot_still_one", 100, 20, 130, 1),
    ("budget_smaller_than_page", 5, 20, 0, 5),
]


@pytest.mark.parametrize("budget, page, fetched, expected", [r[1:] for r in PAGE], ids=[r[0] for r in PAGE])
def test_page_size_at_the_end_of_a_budget(budget, page, fetched, expected):
    assert page_size(Leg(Direction.BEFORE, ref("m", NOW), budget, page), fetched) == expected


def test_pages_of_a_budget_add_up_to_it():
    """Walking full pages through a budget: page_size and leg_over together ask exactly
    `budget` messages and stop there."""
    for budget, page in [(100, 20), (95, 20), (7, 3), (1, 50), (50, 50)]:
        leg = Leg(Direction.BEFORE, ref("m", NOW), budget, page)
        fetched, asks = 0, []
        while True:
            n = page_size(leg, fetched)
            asks.append(n)
            fetched += n
            if leg_over(leg, n, n, fetched, False) is not None:
                break
        assert sum(asks) == budget and max(asks) <= page, (budget, page, asks)


# --- later_times: a read that predates a run that just ended ----------------------------------


@pytest.mark.parametrize("known, stored, expected", [
    (None, JobTimes(last_auto_backfill_ms=5), JobTimes(last_auto_backfill_ms=5)),
    # the run here ended after the read: its times and verdict stand
    (JobTimes(last_auto_backfill_ms=9, last_auto_backfill_ok=True), JobTimes(last_auto_backfill_ms=5,
                                                                               last_auto_backfill_ok=False),
     JobTimes(last_auto_backfill_ms=9, last_auto_backfill_ok=True)),
    # another instance ran it since: the store's newer run wins, verdict included
    (JobTimes(last_auto_backfill_ms=5, last_auto_backfill_ok=True), JobTimes(last_auto_backfill_ms=9,
                                                                               last_auto_backfill_ok=False),
     JobTimes(last_auto_backfill_ms=9, last_auto_backfill_ok=False)),
    # field by field: the newer of each
    (JobTimes(last_recent_sync_ms=7, last_auto_repair_ms=1), JobTimes(last_recent_sync_ms=3, last_auto_repair_ms=4),
     JobTimes(last_recent_sync_ms=7, last_auto_repair_ms=4)),
], ids=["nothing-known", "ours-newer", "stored-newer", "per-field"])
def test_later_times(known, stored, expected):
    assert later_times(known, stored) == expected
