"""Start-up storm control: spread session starts so 500 accounts never connect at once.

Connecting is the expensive moment (TLS + Noise handshake, prekey upload, offline
message flood) for us and the most suspicious one for WhatsApp. A daemon start or a
shared outage would otherwise open every socket in the same second. So every start
(first start and restart alike) takes the next slot from a pacer: consecutive slots are
at least 1/rate apart, plus a random extra of up to `jitter` of that gap so fleets of
daemons on one host do not march in lockstep.

Promise: never more than `rate` starts in any 1-second window. A fractional rate above
1 is rounded down for the spacing, because 2.5/s with 400 ms gaps would fit 3 starts
in one second. Pure: the pacer is an immutable value; time and randomness are passed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from wasync.runtime.backoff import Rand, unit

DEFAULT_RATE = 5.0  # WASYNC_MAX_STARTS_PER_SECOND
DEFAULT_JITTER = 0.2


def gap_ms(rate: float) -> int:
    """Smallest spacing between two starts that keeps the 1-second promise."""
    if not rate > 0:
        raise ValueError("rate must be > 0")
    effective = math.floor(rate) if rate >= 1 else rate
    return math.ceil(1000 / effective)


@dataclass(frozen=True)
class StartPacer:
    rate: float = DEFAULT_RATE
    jitter: float = DEFAULT_JITTER
    last_slot_ms: Optional[int] = None

    def __post_init__(self) -> None:
        gap_ms(self.rate)  # validates
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")

    def next_slot(self, now_ms: int, rand: Rand) -> tuple[int, "StartPacer"]:
        """When the next start may happen (≥ now), and the pacer to keep afterwards."""
        gap = gap_ms(self.rate)
        earliest = now_ms if self.last_slot_ms is None else max(now_ms, self.last_slot_ms + gap)
        slot = earliest + int(self.jitter * gap * unit(rand))
        return slot, replace(self, last_slot_ms=slot)


def schedule_starts(
    n: int,
    now_ms: int,
    rand: Rand,
    rate: float = DEFAULT_RATE,
    jitter: float = DEFAULT_JITTER,
) -> list[int]:
    """Start times (ms) for `n` accounts that all want to start at `now_ms`.

    `rand` should be a `random.Random` here; a single float would give every gap the
    same jitter (allowed, but then the spread is not random)."""
    pacer = StartPacer(rate=rate, jitter=jitter)
    slots = []
    for _ in range(n):
        slot, pacer = pacer.next_slot(now_ms, rand)
        slots.append(slot)
    return slots


def max_in_any_window(times_ms: list[int], window_ms: int = 1000) -> int:
    """Most starts inside any half-open window [t, t + window_ms); for tests and metrics."""
    ts = sorted(times_ms)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - window_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
