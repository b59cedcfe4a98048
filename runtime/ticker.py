"""Timers for actors: tell an actor a message later, or every so often.

pykka has no timers. A thread per timer would cost 500 threads for 500 pending restarts
and would read real time, so tests could not drive it. The Ticker keeps one heap on one
thread, reads time from the injected Clock and only ever *tells* (it never waits on an
actor, so a stuck actor cannot stall anybody's timers).

`FakeTicker` keeps the same contract for tests: nothing fires until `advance()` moves the
FakeClock; due messages then fire in due order, each handled by its actor before the
clock moves on, so a test reads like a timeline.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import pykka

from wasync.runtime.clock import Clock, FakeClock

log = logging.getLogger("wasync.ticker")


@dataclass(eq=False)
class Timer:
    """One scheduled tell; `cancel()` takes it back (a no-op once it has fired)."""

    ref: pykka.ActorRef
    message: Any
    due_s: float
    interval_s: Optional[float] = None  # every: fires again this long after each firing
    cancelled: bool = field(default=False, repr=False)

    def cancel(self) -> None:
        self.cancelled = True


class Timers(Protocol):
    """What actors are given: the Ticker or, in tests, the FakeTicker."""

    def later(self, ref: pykka.ActorRef, message: Any, delay_s: float) -> Timer: ...

    def every(self, ref: pykka.ActorRef, message: Any, interval_s: float,
              first_s: Optional[float] = None) -> Timer: ...


def _deliver(timer: Timer) -> bool:
    """Tell the message; False if the actor is gone (its repeating timer ends)."""
    try:
        timer.ref.tell(timer.message)
        return True
    except pykka.ActorDeadError:
        return False


class _Heap:
    """Timers by due time; ties keep scheduling order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def push(self, timer: Timer) -> None:
        heapq.heappush(self._heap, (timer.due_s, next(self._order), timer))

    def next_due(self) -> Optional[float]:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_s: float) -> Optional[Timer]:
        due = self.next_due()
        if due is None or due > now_s:
            return None
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)


class Ticker:
    """The daemon's one timer thread."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._heap = _Heap()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wasync-ticker", daemon=True)

    def start(self) -> "Ticker":
        self._thread.start()
        return self

    def later(self, ref: pykka.ActorRef, message: Any, delay_s: float) -> Timer:
        return self._add(Timer(ref, message, self.clock.monotonic_s() + max(0.0, delay_s)))

    def every(self, ref: pykka.ActorRef, message: Any, interval_s: float,
              first_s: Optional[float] = None) -> Timer:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        first = interval_s if first_s is None else max(0.0, first_s)
        return self._add(Timer(ref, message, self.clock.monotonic_s() + first, interval_s))

    def _add(self, timer: Timer) -> Timer:
        with self._cv:
            self._heap.push(timer)
            self._cv.notify()
        return timer

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stopping:
                    return
                now = self.clock.monotonic_s()
                timer = self._heap.pop_due(now)
                if timer is None:
                    due = self._heap.next_due()
                    self._cv.wait(None if due is None else max(0.0, due - now))
                    continue
                if timer.interval_s is not None:
                    # Fixed rate, but a ticker that fell behind skips ticks rather than
                    # firing a backlog of them at once.
                    timer.due_s = max(timer.due_s + timer.interval_s, now)
                    self._heap.push(timer)
            try:
                if not _deliver(timer):
                    timer.cancel()
            except Exception:  # never let one bad tell end every timer of the daemon
                log.exception("ticker: could not deliver %r", timer.message)


class FakeTicker:
    """The Ticker's contract on a FakeClock, for tests: `advance(s)` moves time and fires
    what falls due, in order, waiting for each message to be handled, and then for
    `settle()` (what that handler set off among other actors) before time moves on."""

    def __init__(self, clock: FakeClock, handle_timeout_s: float = 10.0, settle=lambda: None):
        self.clock = clock
        self.handle_timeout_s = handle_timeout_s
        self.settle = settle
        self._heap = _Heap()
        self._lock = threading.RLock()

    def start(self) -> "FakeTicker":
        return self

    def stop(self) -> None:
        pass

    def later(self, ref: pykka.ActorRef, message: Any, delay_s: float) -> Timer:
        return self._add(Timer(ref, message, self.clock.monotonic_s() + max(0.0, delay_s)))

    def every(self, ref: pykka.ActorRef, message: Any, interval_s: float,
              first_s: Optional[float] = None) -> Timer:
        first = interval_s if first_s is None else max(0.0, first_s)
        return self._add(Timer(ref, message, self.clock.monotonic_s() + first, interval_s))

    def _add(self, timer: Timer) -> Timer:
        with self._lock:
            self._heap.push(timer)
        return timer

    def pending(self) -> list[tuple[float, Any]]:
        """(seconds from now, message) of every timer not fired or cancelled, earliest first."""
        with self._lock:
            now = self.clock.monotonic_s()
            timers = sorted((t for _, _, t in self._heap._heap if not t.cancelled), key=lambda t: t.due_s)
            return [(t.due_s - now, t.message) for t in timers]

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` ahead, firing every timer that falls due on the way at
        its own time. Timers scheduled while handling one fire too if they fall due."""
        target = self.clock.monotonic_s() + seconds
        while True:
            with self._lock:
                due = self._heap.next_due()
                if due is None or due > target:
                    break
                timer = self._heap.pop_due(due)
                if timer.interval_s is not None:
                    timer.due_s += timer.interval_s
                    self._heap.push(timer)
            if due > self.clock.monotonic_s():
                self.clock.advance(due - self.clock.monotonic_s())
            self._fire(timer)
            self.settle()
        if target > self.clock.monotonic_s():
            self.clock.advance(target - self.clock.monotonic_s())

    def _fire(self, timer: Timer) -> None:
        try:
            timer.ref.ask(timer.message, timeout=self.handle_timeout_s)
        except pykka.ActorDeadError:
            timer.cancel()
        except pykka.Timeout:
            pass  # still queued: it is handled when the actor gets to it, as a tell would be
