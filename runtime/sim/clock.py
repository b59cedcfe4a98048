"""The simulator's time (docs/simulator.md `--speed`): one injected clock, timeline seconds,
and the timers everything in the simulation waits on. Pure: whoever drives `Timers`
(service.py on an event loop, a test by hand) calls `run_due()` when `next_due()` comes.

Timeline seconds are real seconds since `restart()` × speed: every delay and deadline in
the simulation is in them, converted to real seconds only for the wire
(`retry_after_s`, `TemporaryBan.Expire`). Timestamps (messages, receipts) are the clock's
Unix time, unscaled.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

log = logging.getLogger("wasync.sim")


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The only place the simulator reads the machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class SimTime:
    """Timeline seconds since `restart()` (real seconds × speed) and Unix time."""

    def __init__(self, clock: Clock, speed: float = 1.0):
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.clock, self.speed = clock, speed
        self._origin = clock.monotonic()

    def restart(self) -> None:
        self._origin = self.clock.monotonic()

    def now(self) -> float:
        return (self.clock.monotonic() - self._origin) * self.speed

    def real(self, timeline_s: float) -> float:
        """Real seconds a timeline duration lasts."""
        return timeline_s / self.speed

    def wall_ms(self) -> int:
        return int(self.clock.time() * 1000)


@dataclass(eq=False)
class Timer:
    when: float
    fn: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """Callbacks due at timeline times. Whoever drives it calls `run_due()` when
    `next_due()` comes; `on_earlier` says the next due time moved forward."""

    def __init__(self, time: SimTime):
        self.time = time
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.on_earlier: Callable[[], None] = lambda: None

    def at(self, when: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(when, fn)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        if self._heap[0][2] is timer:
            self.on_earlier()
        return timer

    def after(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.at(self.time.now() + delay, fn)

    def next_due(self) -> Optional[float]:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def run_due(self) -> int:
        """Run every timer due by now (including ones the callbacks add); how many ran."""
        now, ran = self.time.now(), 0
        while (due := self.next_due()) is not None and due <= now:
            timer = heapq.heappop(self._heap)[2]
            ran += 1
            try:
                timer.fn()
            except Exception:  # one bad timer must not stop the simulation
                log.exception("[sim] timer failed")
        return ran

    def clear(self) -> None:
        self._heap.clear()
