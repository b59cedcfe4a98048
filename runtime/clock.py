"""Injectable time: actors and policies read time from a Clock, never from `time`, so
tests can drive it."""
from __future__ import annotations

import threading
import time

_MONOTONIC = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class Clock:
    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch (what goes into documents)."""
        return time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        """For intervals and timeouts: never jumps back, and counts the time the machine
        was suspended (CLOCK_BOOTTIME where there is one): a lease holder whose VM was
        paused must find its renewal deadline passed when it wakes, not still ahead."""
        return time.clock_gettime(_MONOTONIC)


class FakeClock(Clock):
    """Time that moves only when a test says so. Wall time follows the monotonic clock
    exactly (no drift from repeated float steps)."""

    START_MONO_S = 1000.0

    def __init__(self, wall_ms: int = 1_763_900_000_000):
        self._wall0_ms = wall_ms
        self._mono = self.START_MONO_S
        self._lock = threading.Lock()

    def wall_ms(self) -> int:
        with self._lock:
            return self._wall0_ms + round((self._mono - self.START_MONO_S) * 1000)

    def monotonic_s(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._mono += seconds
