"""Injectable time: actors and policies read time from a Clock, never from `time`, so
tests can drive it."""
from __future__ import annotations

import threading
import time


class Clock:
    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch (what goes into documents)."""
        return time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        """For intervals and timeouts: never jumps."""
        return time.monotonic()


class FakeClock(Clock):
    def __init__(self, wall_ms: int = 1_763_900_000_000):
        self._wall_ms = wall_ms
        self._mono = 1000.0
        self._lock = threading.Lock()

    def wall_ms(self) -> int:
        with self._lock:
            return self._wall_ms

    def monotonic_s(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._wall_ms += int(seconds * 1000)
            self._mono += seconds
