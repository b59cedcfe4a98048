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

Pure: the facts (what the account's actor observed) and `now_ms` are passed in; the
`warning` is for humans on the
health endpoint, the `reason` is a stable tag for code, alerts and metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from wasync.runtime.account import AccountFacts, Link
from wasync.runtime.model import AccountStatus

KEEPALIVE_TIMEOUTS_DEGRADED = 3  # in a row
UNDECRYPTABLE_DEGRADED = 10  # in the transport's recent window
DEFAULT_DEGRADED_AFTER_MS = 300_000  # WHATSAPP_DEGRADED_AFTER_MS


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
    of notices shorter than this (as at connect: seconds, against a threshold of minutes)
    counts once, however many messages it holds; a steady trickle a quarter of the
    threshold apart or sparser is detected right at the threshold, with room for jitter
    either side of the usual 2 s protocol spacing at the short thresholds tests use."""
    return max(1, degraded_after_ms // 4)


def protocol_streak(start_ms: Optional[int], beats: int, beat_ms: Optional[int], last_protocol_ms: Optional[int],
                    now_ms: int, degraded_after_ms: int) -> tuple[int, int, int]:
    """(start, beats, last beat) of the streak after a protocol message arriving at `now_ms`.

    The caller ends the streak (all None/0) on every real message, every history push and
    every new connection. With gaps within the threshold, beats come at least every 5/4
    of a threshold, so a deaf session reaches MIN_STREAK beats and a threshold's length
    within 3 thresholds, whatever its spacing."""
    if (start_ms is None or beat_ms is None or last_protocol_ms is None
            or now_ms - last_protocol_ms >= streak_gap_ms(degraded_after_ms)):
        return now_ms, 1, now_ms
    if now_ms - beat_ms >= beat_spacing_ms(degraded_after_ms):
        return start_ms, beats + 1, now_ms
    return start_ms, beats, beat_ms


def protocol_only_ms(f: AccountFacts, now_ms: int, degraded_after_ms: int) -> Optional[int]:
    """How long protocol traffic has kept flowing without a real message, or None.

    None unless the streak is long enough to mean something (MIN_STREAK beats), began
    after the latest real message and connect (older traffic says nothing about this
    session), and is still going (the last protocol message is less than one gap old: a
    session whose protocol traffic stopped too is quiet, not deaf). A burst of sync
    notices at connect is a streak of a second or two: it never lasts a threshold unless
    the traffic goes on."""
    start, last = f.protocol_streak_start_ms, f.last_protocol_message_ms
    if start is None or last is None or f.protocol_streak_beats < MIN_STREAK:
        return None
    marks = [t for t in (f.connected_since_ms, f.last_real_message_ms) if t is not None]
    if marks and start < max(marks):
        return None
    if now_ms - last >= streak_gap_ms(degraded_after_ms):
        return None
    return last - start


def verdict(f: AccountFacts, now_ms: int, degraded_after_ms: int = DEFAULT_DEGRADED_AFTER_MS) -> Verdict:
    """Precedence: logged out > pairing > connected/degraded > connecting >
    disconnected. A logged-out account must never be restarted, whatever its socket says.
    (Holds the supervisor put on an account, such as needs_repair, come before any
    verdict: they are decisions, not facts.)"""
    if f.logged_out_reason is not None:
        return Verdict(
            AccountStatus.LOGGED_OUT,
            warning=f"logged out ({f.logged_out_reason}): it will not be restarted; pair it again",
            reason="logged_out",
        )
    if f.link is Link.PAIRING:
        return Verdict(AccountStatus.PAIRING, warning="waiting for the phone to scan the QR code")
    if f.link is Link.CONNECTED:
        return _connected(f, now_ms, degraded_after_ms)
    if f.link is Link.CONNECTING:
        return Verdict(AccountStatus.CONNECTING)
    return Verdict(AccountStatus.DISCONNECTED, warning="not connected", reason="disconnected")


def _connected(f: AccountFacts, now_ms: int, degraded_after_ms: int) -> Verdict:
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
    deaf_ms = protocol_only_ms(f, now_ms, degraded_after_ms)
    if deaf_ms is not None and deaf_ms >= degraded_after_ms:
        return _degraded(
            f"only protocol traffic for {human_ms(now_ms - f.protocol_streak_start_ms)}: the session looks deaf",
            "protocol_only",
        )
    return Verdict(AccountStatus.CONNECTED)


def _degraded(what: str, reason: str) -> Verdict:
    return Verdict(AccountStatus.DEGRADED, is_degraded=True, warning=f"{what}; it will be restarted", reason=reason)
