"""Table tests for the supervision policies in actors/policy/ (pure, clock-injected)."""
from __future__ import annotations

import random

import pytest

from wasync.runtime.backoff import Backoff, unit
from wasync.actors.policy.escalation import REPAIR, RESTART, escalation_window_ms, on_degraded, recovered
from wasync.actors.policy.health import Verdict, human_ms, protocol_streak, verdict
from wasync.runtime.account import AccountFacts, Link
from wasync.actors.policy.intensity import RestartLog, check_restart
from wasync.actors.policy.pacing import StartPacer, gap_ms, max_in_any_window, schedule_starts
from wasync.runtime.model import AccountStatus as S

MIN = 60_000

# ---------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    "attempt, base",
    [(0, 2_000), (1, 4_000), (2, 8_000), (6, 128_000), (7, 256_000), (8, 300_000), (9, 300_000), (10_000, 300_000)],
)
def test_backoff_base_doubles_then_caps(attempt, base):
    assert Backoff().base_ms(attempt) == base


@pytest.mark.parametrize(
    "attempt, u, expected",
    [
        (0, 0.0, 1_600),  # -20 %
        (0, 0.5, 2_000),  # centre
        (0, 0.999999, 2_400),  # just under +20 %
        (20, 0.0, 240_000),  # jitter applies around the cap
        (20, 0.999999, 360_000),
    ],
)
def test_backoff_jitter_bounds(attempt, u, expected):
    assert Backoff().delay_ms(attempt, u) == expected


@pytest.mark.parametrize("attempt", [0, 1, 3, 7, 8, 50])
def test_backoff_random_delays_stay_within_bounds(attempt):
    b, rng = Backoff(), random.Random(attempt)
    lo, hi = b.bounds_ms(attempt)
    delays = [b.delay_ms(attempt, rng) for _ in range(500)]
    assert all(lo <= d <= hi for d in delays)
    assert max(delays) - min(delays) > (hi - lo) * 0.8  # actually spread


@pytest.mark.parametrize(
    "kwargs", [dict(initial_ms=0), dict(max_ms=1_000), dict(factor=0.5), dict(jitter=1.0), dict(jitter=-0.1)]
)
def test_backoff_rejects_bad_config(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


@pytest.mark.parametrize("bad", [1.0, -0.01, 2.0])
def test_unit_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        unit(bad)


def test_backoff_negative_attempt():
    with pytest.raises(ValueError):
        Backoff().base_ms(-1)


# ---------------------------------------------------------------- intensity


@pytest.mark.parametrize(
    "history, now, allowed",
    [
        ((), 0, True),
        ((1, 2, 3, 4), 5, True),  # exactly 5 in the window is ok
        ((1, 2, 3, 4, 5), 6, False),  # the 6th gives up
        ((0, 1, 2, 3, 4), 10 * MIN, True),  # restart at 0 is exactly 10 min old: out
        ((0, 1, 2, 3, 4), 10 * MIN - 1, False),  # ... one ms earlier it still counts
        ((0, MIN, 2 * MIN, 3 * MIN, 4 * MIN), 11 * MIN, True),  # old ones slid out
        ((9 * MIN,) * 5, 19 * MIN - 1, False),
    ],
)
def test_intensity_table(history, now, allowed):
    d = check_restart(RestartLog(history), now)
    assert d.allowed is allowed
    if allowed:
        assert d.reason is None and d.log.times_ms[-1] == now
        assert len(d.log.times_ms) <= 5
    else:
        assert "6 restarts in 10 min (limit 5)" in d.reason


def test_intensity_sliding_over_a_sequence():
    """Restarts every 2 minutes never give up (at most 5 in any 10 min); every 1 minute does."""
    log = RestartLog()
    for i in range(30):
        d = check_restart(log, i * 2 * MIN)
        assert d.allowed, i
        log = d.log
    log, results = RestartLog(), []
    for i in range(8):
        d = check_restart(log, i * MIN)
        results.append(d.allowed)
        log = d.log
    assert results[:5] == [True] * 5 and results[5] is False


def test_intensity_custom_limits():
    assert not check_restart(RestartLog((1_000,)), 2_000, max_restarts=1, window_ms=5_000).allowed
    assert check_restart(RestartLog((1_000,)), 6_000, max_restarts=1, window_ms=5_000).allowed


# ---------------------------------------------------------------- pacing


@pytest.mark.parametrize("rate, gap", [(5, 200), (1, 1000), (3, 334), (2.5, 500), (0.5, 2000), (100, 10)])
def test_pacing_gap(rate, gap):
    assert gap_ms(rate) == gap


@pytest.mark.parametrize("rate", [0, -1])
def test_pacing_rejects_bad_rate(rate):
    with pytest.raises(ValueError):
        gap_ms(rate)


@pytest.mark.parametrize("n, rate, seed", [(500, 5, 1), (500, 5, 2), (50, 1, 3), (200, 2.5, 4), (300, 20, 5), (7, 3, 6)])
def test_pacing_schedule_respects_rate(n, rate, seed):
    now = 1_700_000_000_000
    slots = schedule_starts(n, now, random.Random(seed), rate=rate)
    assert len(slots) == n and slots == sorted(slots) and slots[0] >= now
    gaps = [b - a for a, b in zip(slots, slots[1:])]
    assert all(g >= 1000 / rate for g in gaps)
    assert max_in_any_window(slots) <= max(1, int(rate))
    if n > 20:
        assert len(set(gaps)) > 1  # jittered, not lockstep


def test_pacing_500_accounts_take_about_100_seconds():
    slots = schedule_starts(500, 0, random.Random(0))
    assert 99_800 <= slots[-1] - slots[0] <= 120_000


@pytest.mark.parametrize(
    "last, now, u, slot",
    [
        (None, 1_000, 0.0, 1_000),  # first start: now
        (None, 1_000, 0.5, 1_020),  # ... plus jitter (≤ 20 % of the gap)
        (1_000, 1_050, 0.0, 1_200),  # too soon: wait for the gap
        (1_000, 1_050, 0.999, 1_239),
        (1_000, 9_000, 0.0, 9_000),  # long idle: start now
    ],
)
def test_pacer_next_slot(last, now, u, slot):
    got, pacer = StartPacer(rate=5, last_slot_ms=last).next_slot(now, u)
    assert got == slot and pacer.last_slot_ms == slot


def test_pacer_restarts_arriving_over_time_keep_rate():
    rng, pacer, slots = random.Random(9), StartPacer(rate=5), []
    for now in [0] * 30 + [2_000] * 10 + [50_000] * 12:
        slot, pacer = pacer.next_slot(now, rng)
        slots.append(slot)
    assert max_in_any_window(slots) <= 5


@pytest.mark.parametrize("times, expected", [([], 0), ([0], 1), ([0, 999], 2), ([0, 1000], 1), ([5, 1, 3, 2000], 3)])
def test_max_in_any_window(times, expected):
    assert max_in_any_window(times) == expected


# ---------------------------------------------------------------- health

T0 = 1_700_000_000_000
DEG = 5 * MIN


def F(now_ms=T0 + 60 * MIN, degraded_after_ms=DEG, connected=False, connecting=False, pairing=False,
      last_real_ms=None, last_protocol_ms=None, protocol_streak_count=0, **kw) -> tuple[AccountFacts, int, int]:
    """(facts, now, threshold): the arguments of verdict()."""
    link = (Link.PAIRING if pairing else Link.CONNECTED if connected else Link.CONNECTING if connecting
            else Link.DISCONNECTED)
    facts = AccountFacts("a1", link=link, last_real_message_ms=last_real_ms, last_protocol_message_ms=last_protocol_ms,
                         protocol_streak_beats=protocol_streak_count, **kw)
    return facts, now_ms, degraded_after_ms


C = dict(connected=True, connected_since_ms=T0)


def S_(start_ms, last_ms, count=10) -> dict:
    """A protocol streak from start_ms to last_ms."""
    return dict(protocol_streak_start_ms=start_ms, protocol_streak_count=count, last_protocol_ms=last_ms)
NOW = T0 + 60 * MIN

HEALTH_TABLE = [
    # id, facts, status, is_degraded, reason, warning fragment
    ("disconnected", F(), S.DISCONNECTED, False, "disconnected", "not connected"),
    ("connecting", F(connecting=True), S.CONNECTING, False, None, None),
    ("pairing", F(pairing=True, connecting=True), S.PAIRING, False, None, "QR"),
    ("logged_out", F(logged_out_reason="main device removed", **C), S.LOGGED_OUT, False, "logged_out",
     "logged out (main device removed)"),
    ("logged_out_beats_pairing", F(logged_out_reason="banned", pairing=True), S.LOGGED_OUT, False, "logged_out",
     "will not be restarted"),
    ("quiet_is_healthy", F(**C), S.CONNECTED, False, None, None),
    ("quiet_after_real", F(last_real_ms=T0 + MIN, **C), S.CONNECTED, False, None, None),
    ("protocol_before_real", F(last_real_ms=NOW - 30 * MIN, last_protocol_ms=NOW - 40 * MIN, **C), S.CONNECTED,
     False, None, None),
    ("real_traffic_flowing", F(last_real_ms=NOW - 1_000, last_protocol_ms=NOW - 500, **C), S.CONNECTED, False,
     None, None),
    ("protocol_only_long", F(last_real_ms=NOW - 7 * MIN, **S_(NOW - 6 * MIN, NOW - 1_000), **C), S.DEGRADED, True,
     "protocol_only", "only protocol traffic for 6 min: the session looks deaf; it will be restarted"),
    ("protocol_only_exactly_threshold", F(last_real_ms=NOW - DEG - 1, **S_(NOW - DEG, NOW), **C), S.DEGRADED, True,
     "protocol_only", "for 5 min"),
    ("protocol_only_just_under", F(last_real_ms=NOW - DEG - 1, **S_(NOW - DEG + 1, NOW), **C), S.CONNECTED, False,
     None, None),
    ("protocol_only_since_connect_no_real", F(**S_(T0 + 1_000, NOW - 1_000), **C), S.DEGRADED, True,
     "protocol_only", "for 59 min:"),
    ("streak_too_short_to_count", F(**S_(T0 + 1_000, NOW - 1_000, count=2), **C), S.CONNECTED, False, None, None),
    ("streak_stopped_is_quiet", F(**S_(T0 + 1_000, NOW - DEG), **C), S.CONNECTED, False, None, None),
    ("streak_still_flowing_just_inside_a_gap", F(**S_(T0 + 1_000, NOW - DEG + 1), **C), S.DEGRADED, True,
     "protocol_only", "looks deaf"),
    ("streak_older_than_real_message", F(last_real_ms=NOW - MIN, **S_(NOW - 30 * MIN, NOW), **C), S.CONNECTED,
     False, None, None),
    ("protocol_burst_on_connect_then_quiet", F(**S_(T0 + 1_000, T0 + 2_000), **C), S.CONNECTED, False, None, None),
    ("no_streak_no_verdict", F(last_protocol_ms=NOW, **C), S.CONNECTED, False, None, None),
    ("reconnect_resets_clock", F(connected=True, connected_since_ms=NOW - MIN, last_real_ms=NOW - 50 * MIN,
     **S_(NOW - 40 * MIN, NOW - 1_000)), S.CONNECTED, False, None, None),
    ("no_connected_since_no_real", F(connected=True, **S_(NOW - 10 * MIN, NOW)), S.DEGRADED, True, "protocol_only",
     "for 10 min"),
    ("keepalive_2", F(keepalive_timeouts=2, **C), S.CONNECTED, False, None, None),
    ("keepalive_3", F(keepalive_timeouts=3, **C), S.DEGRADED, True, "keepalive_timeouts",
     "3 keepalive timeouts in a row"),
    ("undecryptable_9", F(undecryptable_recent=9, **C), S.CONNECTED, False, None, None),
    ("undecryptable_10", F(undecryptable_recent=10, last_real_ms=NOW, **C), S.DEGRADED, True,
     "undecryptable_burst", "10 undecryptable messages"),
    ("keepalive_ignored_when_disconnected", F(keepalive_timeouts=9, undecryptable_recent=99), S.DISCONNECTED,
     False, "disconnected", None),
    ("custom_threshold", F(last_real_ms=NOW - 3 * MIN, **S_(NOW - 2 * MIN, NOW), degraded_after_ms=MIN, **C),
     S.DEGRADED, True, "protocol_only", "for 2 min"),
]


@pytest.mark.parametrize("facts, status, degraded, reason, warning", [r[1:] for r in HEALTH_TABLE],
                         ids=[r[0] for r in HEALTH_TABLE])
def test_health_verdict(facts, status, degraded, reason, warning):
    v = verdict(*facts)
    assert isinstance(v, Verdict)
    assert (v.status, v.is_degraded, v.reason) == (status, degraded, reason)
    assert v.is_degraded == (v.status is S.DEGRADED)
    if warning is None:
        assert v.warning is None or status is S.DISCONNECTED
    else:
        assert warning in v.warning


@pytest.mark.parametrize("ms, text", [(0, "0 s"), (45_000, "45 s"), (6 * MIN + 59_000, "6 min"),
                                      (60 * MIN, "1 h"), (125 * MIN, "2 h 5 min"), (-5, "0 s")])
def test_human_ms(ms, text):
    assert human_ms(ms) == text


def test_health_facts_are_immutable():
    with pytest.raises(Exception):
        F()[0].link = Link.CONNECTED  # type: ignore[misc]


HALF = DEG // 4  # the beat spacing
STREAK_TABLE = [
    # id, (start, beats, last beat, last message), now, expected (start, beats, last beat)
    ("first_message", (None, 0, None, None), T0, (T0, 1, T0)),
    ("a_beat_a_quarter_of_a_threshold_after_the_last", (T0, 2, T0, T0 + 1000), T0 + HALF, (T0, 3, T0 + HALF)),
    ("closer_adds_no_beat", (T0, 2, T0, T0 + 1000), T0 + HALF - 1, (T0, 2, T0)),
    ("continues_just_under_the_threshold", (T0, 2, T0 + 1000, T0 + 1000), T0 + 1000 + DEG - 1,
     (T0, 3, T0 + 1000 + DEG - 1)),
    ("a_pause_of_the_threshold_restarts", (T0, 5, T0, T0 + 1000), T0 + 1000 + DEG,
     (T0 + 1000 + DEG, 1, T0 + 1000 + DEG)),
    ("start_without_last_restarts", (T0, 5, T0, None), T0 + 10, (T0 + 10, 1, T0 + 10)),
]


@pytest.mark.parametrize("before, now, expected", [r[1:] for r in STREAK_TABLE], ids=[r[0] for r in STREAK_TABLE])
def test_protocol_streak(before, now, expected):
    assert protocol_streak(*before, now, DEG) == expected


def first_degraded_ms(arrivals_ms, threshold_ms, probe_every_ms=2_000, until_ms=None):
    """Feed protocol messages arriving at `arrivals_ms` (after T0, connected at T0, nothing
    real) through the streak rule, judging at every arrival and every probe as the
    supervisor does; the first time the verdict is degraded, or None."""
    start, beats, beat, last = None, 0, None, None
    arrivals = sorted(arrivals_ms)
    end = until_ms if until_ms is not None else (arrivals[-1] if arrivals else 0) + 3 * threshold_ms
    events = sorted([(t, True) for t in arrivals] + [(t, False) for t in range(0, end + 1, probe_every_ms)])
    for t, is_message in events:
        if is_message:
            start, beats, beat = protocol_streak(start, beats, beat, last, T0 + t, threshold_ms)
            last = T0 + t
        v = verdict(*F(now_ms=T0 + t, connected=True, connected_since_ms=T0, degraded_after_ms=threshold_ms,
                       protocol_streak_start_ms=start, protocol_streak_count=beats, last_protocol_ms=last))
        if v.is_degraded:
            return t
    return None


def every(spacing_ms, until_ms, start_ms=0):
    return list(range(start_ms, until_ms + 1, spacing_ms))


T4 = 4_000  # the threshold of the jitter report: 4 s, a protocol message every 2 s
JITTER_TABLE = [
    # id, arrivals, threshold, first degraded at (None: never)
    ("steady_at_half_the_threshold", every(T4 // 2, 60_000), T4, T4),
    ("half_the_threshold_one_message_4ms_late",
     [0, 2_000, 4_004] + every(2_000, 60_000, 6_000), T4, 4_004),
    ("slightly_over_half_the_threshold", every(T4 // 2 + 4, 60_000), T4, 4_008),
    ("jittered_between_a_quarter_and_almost_the_threshold",
     [0, 1_000, 4_900, 6_100, 9_999, 11_000, 14_500], T4, 4_900),
    ("just_under_the_threshold", every(T4 - 1, 60_000), T4, 2 * (T4 - 1)),
    ("exactly_the_threshold_apart_is_quiet", every(T4, 60_000), T4, None),
    ("odd_key_share_every_two_thresholds", every(2 * T4, 120_000), T4, None),
    ("burst_at_connect_then_quiet", every(50, 1_500), T4, None),
    ("burst_at_connect_one_more_within_a_threshold", every(50, 900) + [4_500], T4, None),
    ("burst_at_connect_then_a_steady_trickle", every(50, 900) + every(3_000, 60_000, 4_000), T4, 7_000),
    ("a_quarter_of_the_threshold_apart", every(T4 // 4, 60_000), T4, T4),
    ("a_third_of_a_6s_threshold_with_jitter", [0, 1_999, 3_998, 6_001, 7_990], 6_000, 6_001),
    ("default_threshold_key_shares_hourly", every(60 * MIN, 5 * 60 * MIN), DEG, None),
    ("default_threshold_protocol_every_2s", every(2_000, 10 * MIN), DEG, DEG),
]


@pytest.mark.parametrize("arrivals, threshold, expected", [r[1:] for r in JITTER_TABLE],
                         ids=[r[0] for r in JITTER_TABLE])
def test_degraded_detection_is_robust_to_jitter(arrivals, threshold, expected):
    assert first_degraded_ms(arrivals, threshold) == expected


def test_a_deaf_session_is_caught_whatever_the_spacing_within_the_threshold():
    rng = random.Random(11)
    for _ in range(200):
        t, arrivals = 0, []
        while t <= 120_000:
            arrivals.append(t)
            t += rng.randint(1, T4 - 1)  # any spacing strictly within the threshold
        first = first_degraded_ms(arrivals, T4)
        assert first is not None and first < 3 * T4


def test_a_steady_protocol_trickle_becomes_degraded_exactly_at_the_threshold():
    assert first_degraded_ms(every(2_000, DEG + 2_000), DEG) == DEG


# ---------------------------------------------------------------- escalation


ESCALATION_TABLE = [
    # id, now, last degraded restart, last real, expected
    ("first_time_restart", NOW, None, None, RESTART),
    ("again_without_real_since_restart_repair", NOW, NOW - 2 * DEG, NOW - 3 * DEG, REPAIR),
    ("again_never_real_repair", NOW, NOW - DEG, None, REPAIR),
    ("healed_in_between_restart", NOW, NOW - 2 * DEG, NOW - DEG, RESTART),
    ("restart_long_ago_restart", NOW, NOW - escalation_window_ms(DEG) - 1, None, RESTART),
    ("restart_at_window_edge_repair", NOW, NOW - escalation_window_ms(DEG), None, REPAIR),
]


@pytest.mark.parametrize("now, restarted, real, expected", [r[1:] for r in ESCALATION_TABLE],
                         ids=[r[0] for r in ESCALATION_TABLE])
def test_on_degraded(now, restarted, real, expected):
    assert on_degraded(now, restarted, real, DEG) == expected


def test_escalation_window_has_a_floor():
    assert escalation_window_ms(1000) == 10 * MIN
    assert escalation_window_ms(DEG) == 3 * DEG


RECOVERED_TABLE = [
    ("real_message_since_connect", F(last_real_ms=T0 + 1, **C), True),
    ("connected_a_whole_threshold", F(connected=True, connected_since_ms=NOW - DEG), True),
    ("connected_briefly_no_real", F(connected=True, connected_since_ms=NOW - DEG + 1), False),
    ("real_before_connect_only", F(connected=True, connected_since_ms=NOW - MIN, last_real_ms=NOW - 2 * MIN), False),
    ("degraded_is_not_recovered", F(keepalive_timeouts=3, last_real_ms=NOW, **C), False),
    ("disconnected", F(last_real_ms=NOW), False),
]


@pytest.mark.parametrize("facts, expected", [r[1:] for r in RECOVERED_TABLE], ids=[r[0] for r in RECOVERED_TABLE])
def test_recovered(facts, expected):
    f, now, threshold = facts
    assert recovered(f, verdict(f, now, threshold), now, threshold) is expected


def test_the_outbox_hears_of_every_link_change_even_a_reconnect_drained_in_one_page():
    """A send that found the socket gone stops the outbox until it hears the link is back.
    A reconnect whose Disconnected and Connected arrive in one drained page leaves
    `connected` as it was: the new connection must still be news."""
    up = AccountFacts("a1", link=Link.CONNECTED, connected_since_ms=1_000)
    down = AccountFacts("a1", link=Link.DISCONNECTED, connected_since_ms=1_000)
    again = AccountFacts("a1", link=Link.CONNECTED, connected_since_ms=5_000)
    assert up.link_news(down) and down.link_news(up)
    assert again.link_news(up)  # back again within one page
    assert not up.link_news(up)  # messages only: nothing to say
    assert not down.link_news(AccountFacts("a1", link=Link.CONNECTING))


def test_a_stream_replaced_is_answered_by_one_reconnect_then_a_hold_within_ten_minutes():
    from wasync.actors.policy.escalation import HOLD, RESTART, after_replaced

    assert after_replaced(1_000_000, None) == RESTART
    assert after_replaced(1_000_000, 1_000_000 - 9 * 60_000) == HOLD
    assert after_replaced(1_000_000, 1_000_000 - 10 * 60_000) == RESTART  # long ago: a new incident
