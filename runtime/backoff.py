"""Exponential backoff with jitter: the one retry-delay rule of the daemon.

Every retry loop uses it: the supervisor's restarts, the store writer's retries, the
Firestore transaction retries, the simulated transport's reconnects and the re-pair
webhook. Why exponential: something that fails again right after a retry is usually
failing for a reason that lasts (network down, store down, WhatsApp throttling us), so
hammering it only adds load. Why capped: once the cause goes away we want to be back
within the cap, not hours later. Why jitter: after a shared outage hundreds of accounts
(or instances) fail together; without jitter they would all retry in the same instant.

Pure: the attempt number and the randomness are passed in, nothing reads a clock.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Union

Rand = Union[random.Random, float]


def unit(r: Rand) -> float:
    """A number in [0, 1) from either a `random.Random` or a float the caller drew."""
    u = r.random() if isinstance(r, random.Random) else float(r)
    if not 0.0 <= u < 1.0:
        raise ValueError(f"random value must be in [0, 1), got {u!r}")
    return u


@dataclass(frozen=True)
class Backoff:
    """Defaults are the supervisor's restart delays (DESIGN.md "Supervision"): 2 s → 5 min,
    ×2, ±20 %. `attempt` 0 is the first retry."""

    initial_ms: int = 2_000
    max_ms: int = 300_000
    factor: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial_ms <= 0 or self.max_ms < self.initial_ms:
            raise ValueError("need 0 < initial_ms <= max_ms")
        if self.factor < 1.0:
            raise ValueError("factor must be >= 1")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")

    def base_ms(self, attempt: int) -> int:
        """Un-jittered delay before restart number `attempt` (0 = first restart).

        Multiplies step by step and stops at the cap, so a huge attempt count cannot
        overflow a float."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        delay = float(self.initial_ms)
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.max_ms:
                return self.max_ms
        return min(int(delay), self.max_ms)

    def delay_ms(self, attempt: int, rand: Rand) -> int:
        """Jittered delay: base × (1 ± jitter), uniformly.

        The cap bounds the base, not the jittered value: at the cap delays spread over
        [max×0.8, max×1.2] instead of piling up on exactly `max_ms`, which keeps
        accounts that all reached the cap from reconnecting in lockstep."""
        base = self.base_ms(attempt)
        spread = self.jitter * (2.0 * unit(rand) - 1.0)
        return max(1, round(base * (1.0 + spread)))

    def bounds_ms(self, attempt: int) -> tuple[int, int]:
        """Smallest and largest delay `delay_ms` can return for `attempt`."""
        base = self.base_ms(attempt)
        return max(1, round(base * (1.0 - self.jitter))), round(base * (1.0 + self.jitter))

    def delay_s(self, attempt: int, rand: Rand) -> float:
        return self.delay_ms(attempt, rand) / 1000
