"""The ticker: one timer thread for every actor (real time), and the FakeTicker that
tests drive by moving a FakeClock."""
from __future__ import annotations

import threading
import time

import pykka
import pytest

from simproc import wait_for
from wasync.runtime.clock import Clock, FakeClock
from wasync.runtime.ticker import FakeTicker, Ticker


class Recorder(pykka.ThreadingActor):
    """Notes (message, clock time) of everything it is told; "again" schedules a follow-up."""

    def __init__(self, clock, ticker=None):
        super().__init__()
        self.clock, self.ticker = clock, ticker
        self.seen: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def on_receive(self, message):
        with self.lock:
            self.seen.append((message, self.clock.monotonic_s()))
        if message == "again" and self.ticker is not None:
            self.ticker.later(self.actor_ref, "follow-up", 0.5)
        if message == "seen":
            return list(self.seen)


@pytest.fixture(autouse=True)
def stop_actors():
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def test_fake_ticker_fires_nothing_until_time_moves_then_in_due_order():
    clock = FakeClock()
    ticker = FakeTicker(clock)
    a, b = Recorder.start(clock), Recorder.start(clock)
    t0 = clock.monotonic_s()
    ticker.later(a, "a at 3", 3.0)
    ticker.later(b, "b at 1", 1.0)
    ticker.later(a, "a at 1", 1.0)  # same time: scheduling order
    ticker.advance(0.999)
    assert [m for m, _ in a.ask("seen") + b.ask("seen") if m != "seen"] == []
    ticker.advance(5.0)
    assert [(m, t - t0) for m, t in a.ask("seen") if m != "seen"] == [("a at 1", 1.0), ("a at 3", 3.0)]
    assert [(m, t - t0) for m, t in b.ask("seen") if m != "seen"] == [("b at 1", 1.0)]
    assert clock.monotonic_s() - t0 == pytest.approx(5.999)


def test_fake_ticker_every_cancel_and_timers_set_while_handling():
    clock = FakeClock()
    ticker = FakeTicker(clock)
    rec = Recorder.start(clock, ticker)
    t0 = clock.monotonic_s()
    tick = ticker.every(rec, "tick", 2.0)
    ticker.later(rec, "again", 1.0)  # its handler schedules "follow-up" 0.5 s later: fires in this advance
    gone = ticker.later(rec, "cancelled", 1.5)
    gone.cancel()
    ticker.advance(6.0)
    seen = [(m, t - t0) for m, t in rec.ask("seen") if m != "seen"]
    assert seen == [("again", 1.0), ("follow-up", 1.5), ("tick", 2.0), ("tick", 4.0), ("tick", 6.0)]
    tick.cancel()
    ticker.advance(10.0)
    assert [m for m, _ in rec.ask("seen") if m == "tick"] == ["tick"] * 3
    assert ticker.pending() == []


def test_fake_ticker_forgets_timers_of_stopped_actors():
    clock = FakeClock()
    ticker = FakeTicker(clock)
    rec = Recorder.start(clock)
    ticker.every(rec, "tick", 1.0)
    rec.stop()
    ticker.advance(3.0)  # no error, and the repeating timer is dropped
    assert ticker.pending() == []


def test_fake_clock_wall_time_follows_without_drift():
    clock = FakeClock(wall_ms=1_000_000)
    for _ in range(1000):
        clock.advance(0.001)
    assert clock.wall_ms() == 1_001_000
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_real_ticker_later_every_and_cancel():
    clock = Clock()
    ticker = Ticker(clock).start()
    rec = Recorder.start(clock)
    started = time.monotonic()
    ticker.later(rec, "soon", 0.05)
    ticker.later(rec, "first", 0.01)
    ticker.later(rec, "never", 0.05).cancel()
    tick = ticker.every(rec, "tick", 0.02)
    wait_for(lambda: sum(1 for m, _ in rec.ask("seen") if m == "tick") >= 5, 5, "five ticks")
    tick.cancel()
    seen = [m for m, _ in rec.ask("seen") if m not in ("seen", "tick")]
    assert seen == ["first", "soon"]
    assert time.monotonic() - started >= 0.1
    count = sum(1 for m, _ in rec.ask("seen") if m == "tick")
    time.sleep(0.1)
    assert sum(1 for m, _ in rec.ask("seen") if m == "tick") <= count + 1  # at most one in flight
    ticker.stop()
    assert not ticker._thread.is_alive()


def test_real_ticker_survives_a_dead_actor():
    clock = Clock()
    ticker = Ticker(clock).start()
    dead, alive = Recorder.start(clock), Recorder.start(clock)
    dead.stop()
    ticker.every(dead, "tick", 0.01)
    ticker.later(alive, "still here", 0.05)
    wait_for(lambda: any(m == "still here" for m, _ in alive.ask("seen")), 5, "the live actor's message")
    ticker.stop()
