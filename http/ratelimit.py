"""A token bucket per caller for the mutating admin endpoints: a script gone wrong (a
retry loop adding accounts, resending messages) is slowed down before it floods the
daemon or WhatsApp. Pure: the caller passes the time in."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at_s: float


class RateLimiter:
    """`per_minute` requests a minute per key, in bursts of up to `burst` (default: ten
    seconds' worth, at least 5). Keys are hashed: a bearer token is never kept as it is."""

    MAX_KEYS = 10_000  # a flood of made-up tokens must not grow memory without bound

    def __init__(self, per_minute: int, burst: int | None = None):
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1")
        self.rate_s = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(5, per_minute // 6))
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()[:16]

    def take(self, key: str, now_s: float) -> float:
        """0 if the request may go ahead (one token taken), else the seconds to wait."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.MAX_KEYS:
                    self._buckets.clear()  # forgetting is safe: everyone starts with a full bucket
                bucket = self._buckets[key] = _Bucket(self.burst, now_s)
            bucket.tokens = min(self.burst, bucket.tokens + max(0.0, now_s - bucket.at_s) * self.rate_s)
            bucket.at_s = now_s
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate_s
