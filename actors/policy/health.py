"""Health verdict: what state an account is really in, from facts the session reports.

"Connected" from the transport is not enough. The failure that matters most is a deaf
session: the socket is up, protocol messages (key shares, sync notices) keep flowing, but
no real message arrives any more, so the mirror silently falls behind. That is
`degraded`, and the supervisor restarts the session (DESIGN.md "Supervision"). A connected
account that is merely quiet is healthy: people do stop writing, and a quiet account still
gets the odd protocol message — so "deaf" needs a sustained streak of protocol traffic
(no pause as long as the threshold, for a whole threshold; see `protocol_streak`), not
just the absence of real messages, which is all the old backend looked at. Repeated
keepalive timeouts and bursts of undecryptable messages (broken Signal sessions) are the
other two signs of a session that needs a restart.

Pure: all facts, including `now_ms`, are passed in; the `warning` is for humans on the
health endpoint, the `reason` is a stable tag for code, alerts and metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from wasync.runtime.model import AccountStatus

KEEPALIVE_TIMEOUTS_DEGRADED = 3  # in a row
UNDECRYPTABLE_DEGRADED = 10  # in the transport's recent window
DEFAULT_DEGRADED_AFTER_MS = 300_000  # WHATSAPP_DEGRADED_AFTER_MS


@dataclass(frozen=True)
class HealthFacts:
    now_ms: int
    connected: bool = False
    connecting: bool = False
    pairing: bool = False
    logged_out_reason: Optional[str] = None  # logged out, main device gone, banned
    needs_repair: bool = False
    repair_reason: Optional[str] = None
    last_real_ms: Optional[int] = None
    last_protocol_ms: Optional[int] = None
    connected_since_ms: Optional[int] = None
    # the current run of protocol messages with no real message (see protocol_streak)
    protocol_streak_start_ms: Optional[int] = None
    protocol_streak_count: int = 0  # beats
    keepalive_timeouts: int = 0  # consecutive; reset by any answered keepalive
    undecryptable_recent: int = 0
    degraded_after_ms: int = DEFAULT_DEGRADED_AFTER_MS


@dataclass(frozen=True)
class Verdict:
    status: AccountStatus
    is_degraded: bool = False
    warning: Optional[str] = None
    reason: Optional[str] = None


def human_ms(ms: int) -> str:
    """A duration the way an operator reads it: "45 s", "6 min", "2 h 5 min"."""
    s = max(0, ms) // 1000
    if s < 60:
        return f"{s} s"
    m = s // 60
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if m else f"{h} h"


MIN_STREAK = 3  # beats (see protocol_streak) in a streak before it can mean "deaf"


def streak_gap_ms(degraded_after_ms: int) -> int:
    """A pause of this long (or longer) between two protocol messages ends a streak: the
    threshold itself. Traffic at any spacing within the threshold keeps a deaf session's
    streak going, however much its timing jitters; a quiet account whose key shares come
    further apart than that never builds one."""
    return max(1, degraded_after_ms)


def beat_spacing_ms(degraded_after_ms: int) -> int:
    """Protocol messages closer than this to the streak's last beat add no beat: a burst
    of notices (as at connect) counts once, however many messages it holds."""
    return max(1, degraded_after_ms // 2)


def protocol_streak(start_ms: Optional[int], beats: int, beat_ms: Optional[int], last_protocol_ms: Optional[int],
                    now_ms: int, degraded_after_ms: int) -> tuple[int, int, int]:
    """(start, beats, last beat) of the streak after a protocol message arriving at `now_ms`.

    The caller ends the streak (all None/0) on every real message, every history push and
    every new connection. With gaps within the threshold, beats come at least every 1.5
    thresholds, so a deaf session reaches MIN_STREAK beats and a threshold's length
    within 3 thresholds, whatever its spacing."""
    if (start_ms is None or beat_ms is None or last_protocol_ms is None
            or now_ms - last_protocol_ms >= streak_gap_ms(degraded_after_ms)):
        return now_ms, 1, now_ms
    if now_ms - beat_ms >= beat_spacing_ms(degraded_after_ms):
        return start_ms, beats + 1, now_ms
    return start_ms, beats, beat_ms


def protocol_only_ms(f: HealthFacts) -> Optional[int]:
    """How long protocol traffic has kept flowing without a real message, or None.

    None unless the streak is long enough to mean something (MIN_STREAK beats), began
    after the latest real message and connect (older traffic says nothing about this
    session), and is still going (the last protocol message is less than one gap old: a
    session whose protocol traffic stopped too is quiet, not deaf). A burst of sync
    notices at connect is a streak of a second or two: it never lasts a threshold unless
    the traffic goes on."""
    if f.protocol_streak_start_ms is None or f.last_protocol_ms is None or f.protocol_streak_count < MIN_STREAK:
        return None
    marks = [t for t in (f.connected_since_ms, f.last_real_ms) if t is not None]
    if marks and f.protocol_streak_start_ms < max(marks):
        return None
    if f.now_ms - f.last_protocol_ms >= streak_gap_ms(f.degraded_after_ms):
        return None
    return f.last_protocol_ms - f.protocol_streak_start_ms


def verdict(f: HealthFacts) -> Verdict:
    """Precedence: logged out > needs repair > pairing > connected/degraded >
    connecting > disconnected. Terminal states win over transport flags because a
    logged-out account must never be restarted, whatever its socket says."""
    if f.logged_out_reason is not None:
        return Verdict(
            AccountStatus.LOGGED_OUT,
            warning=f"logged out ({f.logged_out_reason}): it will not be restarted; pair it again",
            reason="logged_out",
        )
    if f.needs_repair:
        why = f.repair_reason or "needs repair"
        return Verdict(
            AccountStatus.NEEDS_REPAIR,
            warning=f"{why}: restarts stopped; needs an operator",
            reason="needs_repair",
        )
    if f.pairing:
        return Verdict(AccountStatus.PAIRING, warning="waiting for the phone to scan the QR code")
    if f.connected:
        return _connected(f)
    if f.connecting:
        return Verdict(AccountStatus.CONNECTING)
    return Verdict(AccountStatus.DISCONNECTED, warning="not connected", reason="disconnected")


def _connected(f: HealthFacts) -> Verdict:
    if f.keepalive_timeouts >= KEEPALIVE_TIMEOUTS_DEGRADED:
        return _degraded(
            f"{f.keepalive_timeouts} keepalive timeouts in a row: the connection looks stalled",
            "keepalive_timeouts",
        )
    if f.undecryptable_recent >= UNDECRYPTABLE_DEGRADED:
        return _degraded(
            f"{f.undecryptable_recent} undecryptable messages recently: the encryption sessions look broken",
            "undecryptable_burst",
        )
    deaf_ms = protocol_only_ms(f)
    if deaf_ms is not None and deaf_ms >= f.degraded_after_ms:
        return _degraded(
            f"only protocol traffic for {human_ms(f.now_ms - f.protocol_streak_start_ms)}: the session looks deaf",
            "protocol_only",
        )
    return Verdict(AccountStatus.CONNECTED)


def _degraded(what: str, reason: str) -> Verdict:
    return Verdict(AccountStatus.DEGRADED, is_degraded=True, warning=f"{what}; it will be restarted", reason=reason)
