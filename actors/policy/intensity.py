"""Restart intensity: when to stop restarting an account and ask a human.

Backoff alone would retry forever. An account that needed more than 5 restarts in
10 minutes is not having bad luck: its session is broken (bad keys, a ban, a bug we
keep tripping) and every restart costs a connection WhatsApp may hold against us.
So the supervisor stops, marks the account `needs_repair` and alerts (DESIGN.md
"Supervision", the OTP-style restart intensity).

Pure: the restart history is an immutable value the caller keeps; `now_ms` is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MAX_RESTARTS = 5
WINDOW_MS = 10 * 60_000


@dataclass(frozen=True)
class RestartLog:
    """Times (ms) of the restarts that still count, oldest first."""

    times_ms: tuple[int, ...] = ()

    def within(self, now_ms: int, window_ms: int = WINDOW_MS) -> "RestartLog":
        """Only the restarts in the window (now - window, now]: a restart exactly
        `window_ms` ago has just fallen out."""
        return RestartLog(tuple(t for t in self.times_ms if now_ms - window_ms < t <= now_ms))


@dataclass(frozen=True)
class IntensityDecision:
    allowed: bool
    log: RestartLog  # the log to keep: pruned, plus this restart when allowed
    reason: Optional[str] = None  # set when not allowed; goes to repair_reason / the alert


def check_restart(
    log: RestartLog,
    now_ms: int,
    max_restarts: int = MAX_RESTARTS,
    window_ms: int = WINDOW_MS,
) -> IntensityDecision:
    """May the supervisor restart the account now?

    Counts this restart too: with the defaults the 5th restart inside 10 minutes is
    still allowed, the 6th gives up."""
    recent = log.within(now_ms, window_ms)
    if len(recent.times_ms) + 1 > max_restarts:
        minutes = window_ms / 60_000
        span = f"{minutes:g} min" if minutes >= 1 else f"{window_ms / 1000:g} s"
        return IntensityDecision(
            allowed=False,
            log=recent,
            reason=f"{len(recent.times_ms) + 1} restarts in {span} (limit {max_restarts}): giving up",
        )
    return IntensityDecision(allowed=True, log=RestartLog(recent.times_ms + (now_ms,)))
