"""What the supervisor does about a degraded session, and when an account has recovered.

A degraded session gets one fresh connection. If it is degraded again and no real
message arrived since that restart, the restart did not help (the simulator's and the
field's "heals only on re-pair" case): restarting again would only burn connections, so
the account is handed to a human (`needs_repair` + alert). A restart long ago does not
count: a session that was healthy for a while and degrades again gets its restart again.

Recovery re-arms alerts and clears the store's repair flags. It means the account proved
itself since it connected: a real message arrived, or it stayed connected and healthy for
a whole degradation threshold.

Pure: times are passed in.
"""
from __future__ import annotations

from typing import Optional

from wasync.actors.policy.health import Verdict
from wasync.runtime.account import AccountFacts
from wasync.runtime.model import AccountStatus

MIN_ESCALATION_WINDOW_MS = 10 * 60_000

RESTART = "restart"
REPAIR = "repair"


def escalation_window_ms(degraded_after_ms: int) -> int:
    """How long after a degraded restart a new degradation still counts as "the restart
    did not heal it": long enough for the next verdict (one threshold) plus slack."""
    return max(3 * degraded_after_ms, MIN_ESCALATION_WINDOW_MS)


def on_degraded(now_ms: int, last_degraded_restart_ms: Optional[int], last_real_ms: Optional[int],
                degraded_after_ms: int) -> str:
    """RESTART or REPAIR for an account whose verdict is degraded now."""
    if last_degraded_restart_ms is None:
        return RESTART
    if now_ms - last_degraded_restart_ms > escalation_window_ms(degraded_after_ms):
        return RESTART
    if last_real_ms is not None and last_real_ms > last_degraded_restart_ms:
        return RESTART  # it did heal, and degraded again later: a new incident
    return REPAIR


def recovered(facts: AccountFacts, v: Verdict, now_ms: int, degraded_after_ms: int) -> bool:
    """Connected, not degraded, and proven since it connected."""
    since = facts.connected_since_ms
    if v.status is not AccountStatus.CONNECTED or since is None:
        return False
    if facts.last_real_message_ms is not None and facts.last_real_message_ms >= since:
        return True
    return now_ms - since >= degraded_after_ms
