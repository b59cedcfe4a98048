"""SupervisorActor inside the daemon's real system (build_system), driven on a FakeClock:
restarts, intensity, repair holds, liveness, and that it never waits for anybody.
The end-to-end tests (test_e2e_supervision.py) run the same rules against the simulator
in real time."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from simproc import wait_for
from systemrig import SystemRig
from wasync.actors.supervisor_protocol import ChildFailed
from wasync.runtime.account import AccountPatch, Repair
from wasync.runtime.model import AccountStatus
from wasync.runtime.sim import protobufs as pb


@pytest.fixture
def rig_factory(tmp_path):
    made = []

    def make(accounts, **env):
        made.append(SystemRig(tmp_path / f"rig{len(made)}", accounts, **env).start())
        return made[-1]

    yield make
    for rig in made:
        rig.stop()


def status(rig, account_id):
    state = rig.board.account(account_id)
    return state.status if state else None


def test_restarts_stop_at_the_intensity_limit_and_the_account_needs_repair(rig_factory, caplog):
    caplog.set_level(logging.INFO)
    rig = rig_factory([("a1", None)])
    rig.transport.failing.add("a1")
    rig.advance(0.5)
    assert rig.transport.opened["a1"] == 1
    rig.advance(1.0)  # the first restart waits 2 s ±20 % on the fake clock: not yet at 1.5 s
    assert rig.transport.opened["a1"] == 1
    rig.advance(1.0)
    assert rig.transport.opened["a1"] == 2
    # Then 4, 8, 16, 32 s (each ±20 %): the 6th start fails and the 6th restart is refused.
    rig.advance(120)
    assert rig.transport.opened["a1"] == 6
    state = rig.board.account("a1")
    assert state.status is AccountStatus.NEEDS_REPAIR and state.needs_repair
    assert "6 restarts in 10 min (limit 5)" in state.repair_reason and "no transport in this build" in state.repair_reason
    assert state.restarts == 5 and set(rig.system.alerts.open_incidents()) == {"a1"}
    rig.advance(1)
    doc = rig.store.get_account("a1")
    assert doc["status"] == "needs_repair" and doc["needsRepair"] is True and "6 restarts" in doc["repairReason"]
    assert rig.restarts("start_failed") + rig.restarts("failure") == 5
    assert "[supervisor] accountId=a1 needs re-pair" in caplog.text
    rig.advance(600)  # given up means given up
    assert rig.transport.opened["a1"] == 6 and rig.running() == ()


def test_an_operator_restart_gives_a_fresh_budget_and_pairs_afresh(rig_factory):
    rig = rig_factory([("a1", None)])
    rig.transport.failing.add("a1")
    rig.advance(120)
    assert status(rig, "a1") is AccountStatus.NEEDS_REPAIR and rig.transport.opened["a1"] == 6
    rig.control.regenerate_qr("a1")
    rig.advance(120)
    assert rig.transport.opened["a1"] == 12
    assert rig.transport.forgotten == ["a1"] * 6  # every start pairs afresh until a pairing succeeds
    assert status(rig, "a1") is AccountStatus.NEEDS_REPAIR


def test_an_account_the_store_marks_for_repair_is_not_started(tmp_path):
    rig = SystemRig(tmp_path, [("a1", "15550001111"), ("a2", None)])
    rig.store.update_account("a1", AccountPatch(status=AccountStatus.LOGGED_OUT,
                                                repair=Repair(True, "logged out (LOGGED_OUT)", 1)), 1)
    rig.store.update_account("a2", AccountPatch(status=AccountStatus.CONNECTING), 1)
    with rig.store._write() as conn:  # a2 disabled by an operator
        conn.execute("UPDATE accounts SET doc = json_set(doc, '$.enabled', json('false')) WHERE account_id = 'a2'")
    try:
        rig.start()
        rig.advance(2)
        state = rig.board.account("a1")
        assert state.status is AccountStatus.LOGGED_OUT and state.needs_repair and "pair it again" in state.warning
        assert rig.running() == () and rig.transport.opened == {}
        assert set(rig.system.alerts.open_incidents()) == {"a1"}  # opened silently: no second alert
        assert rig.board.account("a2") is None
    finally:
        rig.stop()


def test_reports_from_a_replaced_actor_are_ignored(rig_factory):
    rig = rig_factory([("a1", None)])
    rig.advance(0.5)
    assert rig.running() == ("a1",)
    rig.supervisor.tell(ChildFailed("a1", 99, "stale news from an old actor"))
    rig.supervisor.tell(ChildFailed("nobody", 1, "unknown account"))
    rig.settle()
    assert rig.restarts("failure") == 0 and rig.running() == ("a1",)


def test_a_deaf_session_is_shown_degraded_then_restarted(rig_factory):
    rig = rig_factory([("a1", "15550001111")], WHATSAPP_DEGRADED_AFTER_MS="6000")
    rig.transport.connect_on_start.add("a1")
    rig.advance(0.5)
    assert status(rig, "a1") is AccountStatus.CONNECTED
    session = rig.transport.sessions["a1"]
    seen = []
    for n in range(8):  # a key share every 2 s, nothing real
        session.emit(pb.app_state_key_share_event("15550001111", f"P{n}", rig.clock.wall_ms()))
        rig.settle()
        seen.append((n * 2, status(rig, "a1"), rig.transport.opened["a1"]))
        if rig.transport.opened["a1"] == 2:
            break
        rig.advance(2.0)
    states = [s for _, s, _ in seen]
    assert AccountStatus.DEGRADED in states, seen
    first_degraded = next(t for t, s, _ in seen if s is AccountStatus.DEGRADED)
    assert first_degraded == 6, seen  # at the threshold exactly
    assert seen[-1][2] == 2 and rig.restarts("degraded") == 1, seen  # restarted at the next report


def test_a_hung_actor_is_replaced_after_its_session_is_killed(rig_factory):
    rig = rig_factory([("a1", "15550001111")], WASYNC_HUNG_AFTER_MS="4000", WASYNC_DEBUG_FAULTS="true")
    rig.advance(0.5)
    first = rig.transport.sessions["a1"]
    rig.control.inject_fault("a1", "block")
    rig.advance(8)  # probes every 2 s; unanswered for 4 s: replaced
    assert rig.metrics.hung_actors._value.get() == 1
    wait_for(lambda: first.stopped.is_set(), 5, "the hung actor's session stopped from outside")
    rig.advance(4)  # the restart backoff (2 s ±20 %), after the old session is gone
    assert rig.transport.opened["a1"] == 2 and rig.running() == ("a1",)


def test_pairing_by_code_runs_off_the_actor_so_probes_are_answered(rig_factory):
    rig = rig_factory([("a1", None)], WASYNC_HUNG_AFTER_MS="4000")
    rig.advance(0.5)
    rig.transport.slow_pairing = threading.Event()
    answer = {}
    asker = threading.Thread(target=lambda: answer.setdefault("code", rig.control.pair_phone("a1", "15550001111")))
    asker.start()
    rig.advance(20)  # five liveness rounds while the pairing call hangs
    assert rig.metrics.hung_actors._value.get() == 0 and rig.transport.opened["a1"] == 1
    rig.transport.slow_pairing.set()
    asker.join(10)
    assert answer == {"code": "ABCD1234"}


def test_the_supervisor_never_waits_for_children_that_take_20_s_to_stop(rig_factory):
    slow = [f"s{n:02d}" for n in range(50)]
    rig = rig_factory([(a, f"1555000{n:04d}") for n, a in enumerate(slow)] + [("crash", "15559999999")],
                      WASYNC_DEBUG_FAULTS="true")
    for account_id in slow:
        rig.transport.slow_stop[account_id] = threading.Event()
    rig.advance(1)
    assert len(rig.running()) == 51
    for account_id in slow:  # 50 accounts removed: 50 children stopping, each for 20 s
        rig.control.remove_account(account_id)
    rig.settle()
    assert rig.running() == ("crash",)
    took = []
    for _ in range(20):
        started = time.monotonic()
        rig.running()
        took.append(time.monotonic() - started)
    print(f"supervisor answers while 50 children stop: max {max(took) * 1000:.1f} ms over {len(took)} asks")
    assert max(took) < 0.1
    # A crashed sibling is restarted on time: backoff 2 s ±20 %.
    rig.control.inject_fault("crash", "raise")
    rig.settle()
    assert rig.restarts("failure") == 1
    rig.advance(1.5)
    assert rig.transport.opened["crash"] == 1
    rig.advance(1.0)
    assert rig.transport.opened["crash"] == 2 and "crash" in rig.running()
    assert all(not rig.transport.sessions[a].stopped.is_set() for a in slow)  # still stopping: nobody waited


def crash_while_stopping_slowly(rig, account_id="a1"):
    """Make `account_id`'s child fail while its session will take long to stop."""
    rig.transport.slow_stop[account_id] = threading.Event()
    rig.control.inject_fault(account_id, "raise")
    rig.settle()
    assert rig.restarts("failure") == 1


def test_a_new_actor_waits_until_the_old_session_has_really_stopped(rig_factory):
    rig = rig_factory([("a1", "15550001111")], WASYNC_DEBUG_FAULTS="true")
    rig.advance(0.5)
    crash_while_stopping_slowly(rig)
    rig.advance(16)  # the backoff is over and the stop deadline (15 s) passed: the child is abandoned
    # ...but its session is still stopping (the reaper's stop waits too): no second session yet
    assert rig.transport.opened["a1"] == 1 and rig.running() == ()
    rig.transport.slow_stop["a1"].set()
    rig.until(lambda: rig.transport.opened["a1"] == 2, what="the new actor, once the old session stopped")
    assert rig.running() == ("a1",)


def test_nothing_starts_once_the_daemon_is_shutting_down(rig_factory):
    import pykka

    from wasync.actors.reply import new_reply
    from wasync.actors.supervisor_protocol import OpenSessions, StopSessions

    rig = rig_factory([("a1", "15550001111"), ("a2", "15550002222")], WASYNC_DEBUG_FAULTS="true")
    rig.advance(0.5)
    crash_while_stopping_slowly(rig)
    rig.advance(3)  # the restart is due, waiting for the old actor to stop
    stopped = new_reply()
    rig.supervisor.tell(StopSessions(stopped))
    # a2 stops its session at once; a1 has no running child, but its old one is still stopping
    with pytest.raises(pykka.Timeout):
        stopped.get(timeout=1)
    assert rig.supervisor.ask(OpenSessions(), timeout=5) == frozenset({"a1"})
    rig.transport.slow_stop["a1"].set()
    rig.until(lambda: rig.transport.sessions["a1"].stopped.is_set(), what="the old session stopped")
    assert stopped.get(timeout=10) is True and rig.supervisor.ask(OpenSessions(), timeout=5) == frozenset()
    rig.advance(5)
    assert rig.transport.opened == {"a1": 1, "a2": 1} and rig.running() == ("a2",)
    assert rig.board.account("a1") is not None and not rig.board.ingesting("a1")  # its rows go to the sweeper


def test_a_lease_lost_outright_closes_the_socket_even_while_the_actor_is_busy(rig_factory):
    from wasync.actors.supervisor_protocol import Lost

    rig = rig_factory([("a1", "15550001111")], WASYNC_DEBUG_FAULTS="true")
    rig.advance(0.5)
    first = rig.transport.sessions["a1"]
    rig.control.inject_fault("a1", "block")  # busy for good: its stop waits behind its inbox
    rig.supervisor.tell(Lost("a1", "not renewed in time", graceful=False))
    wait_for(lambda: first.stopped.is_set(), 5, "the socket closed without the actor")
    rig.advance(1)
    assert rig.running() == ()


def test_a_stream_replaced_while_the_lease_stays_here_reconnects_once_a_lease_later_then_holds(rig_factory):
    """An instance frozen in the middle of connecting finishes that connect when it wakes,
    after its lease came here, and kicks our socket. Held for good, the account would be
    deaf under a lease nobody else may take: the first takeover gets one reconnect a lease
    later (never at once), a second one within ten minutes holds it for an operator."""
    rig = rig_factory([("a1", "15550001111")])
    rig.transport.connect_on_start.add("a1")
    rig.advance(0.5)
    assert status(rig, "a1") is AccountStatus.CONNECTED
    rig.transport.sessions["a1"].emit(pb.stream_replaced_event())
    rig.settle()
    state = rig.board.account("a1")
    assert state.status is AccountStatus.DISCONNECTED and "reconnecting once in 15 s" in state.warning
    rig.advance(14)
    assert rig.transport.opened["a1"] == 1  # no fight: a whole lease first
    rig.advance(2)
    assert rig.transport.opened["a1"] == 2 and status(rig, "a1") is AccountStatus.CONNECTED
    rig.advance(60)
    rig.transport.sessions["a1"].emit(pb.stream_replaced_event())
    rig.settle()
    rig.advance(60)
    state = rig.board.account("a1")
    assert rig.transport.opened["a1"] == 2 and state.status is AccountStatus.DISCONNECTED
    assert "again" in state.warning and rig.metrics.stream_replaced._value.get() == 2
    assert "a1" in rig.system.alerts.open_incidents()  # an operator must act now


def _lose_and_own_again(rig, account_id: str) -> None:
    """The lease coordinator's word: lost (not renewed in time), then owned again."""
    from wasync.actors.supervisor_protocol import Lost, Owned
    from wasync.runtime.store.base import Fence

    epoch = rig.board.account(account_id).lease_epoch
    rig.supervisor.tell(Lost(account_id, "not renewed in time", graceful=True))
    record = next(r for r in rig.store.list_account_records() if r.account_id == account_id)
    rig.supervisor.tell(Owned(record, Fence("i1", epoch)))
    rig.settle()


def test_an_account_owned_again_while_its_held_actor_still_stops_starts_afresh(rig_factory):
    """Holds belong to the lease they were decided under: losing it clears their alert. An
    account owned again before its old actor has stopped must not keep the hold (it would
    be held with no alert: silently deaf); it starts afresh, as when the watch is new."""
    from wasync.actors.supervisor_protocol import SessionReplaced

    rig = rig_factory([("a1", "15550001111")], WASYNC_DEBUG_FAULTS="true")
    rig.transport.connect_on_start.add("a1")
    rig.advance(0.5)
    rig.transport.sessions["a1"].emit(pb.stream_replaced_event())
    rig.settle()
    rig.advance(16)
    assert rig.transport.opened["a1"] == 2 and status(rig, "a1") is AccountStatus.CONNECTED
    rig.control.inject_fault("a1", "block")  # the actor is busy for good: its stop waits
    rig.supervisor.tell(SessionReplaced("a1", rig.board._decided["a1"].generation))  # the second takeover
    rig.settle()
    assert "again" in rig.board.account("a1").warning and "a1" in rig.system.alerts.open_incidents()
    _lose_and_own_again(rig, "a1")
    rig.advance(60)  # the stuck actor is let go at its stop deadline
    assert rig.transport.opened["a1"] == 3 and rig.running() == ("a1",)


def test_a_re_pair_asked_while_the_lease_is_lost_and_regained_is_kept(rig_factory):
    """The operator's regenerate-qr (a new pairing) outlives a lease lost and owned again
    before the old actor stopped: the next start still forgets the stored session."""
    rig = rig_factory([("a1", "15550001111")], WASYNC_DEBUG_FAULTS="true")
    rig.transport.connect_on_start.add("a1")
    rig.advance(0.5)
    rig.control.inject_fault("a1", "block")  # the actor is busy for good: its stop waits
    rig.control.regenerate_qr("a1", new_pairing=True)
    _lose_and_own_again(rig, "a1")
    rig.advance(60)  # the stuck actor is let go at its stop deadline
    assert rig.transport.opened["a1"] == 2 and rig.transport.forgotten == ["a1"]
