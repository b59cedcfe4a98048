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
HOLD = "hold"


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


# --- StreamReplaced ---------------------------------------------------------------------------

REPLACED_WINDOW_MS = 10 * 60_000


def after_replaced(now_ms: int, last_replaced_ms: Optional[int]) -> str:
    """RESTART (once, after a lease) or HOLD for an account whose socket was taken over
    (StreamReplaced) while its lease here is still ours.

    Only a client with this device's own keys can take its socket: in practice another
    instance of ours. One that was frozen in the middle of connecting (a long GC pause,
    a stopped VM) finishes that connect when it wakes, after its lease went to us, and
    kicks us; it stops its own socket as soon as it sees its lease gone. Holding here for
    good would leave the account deaf under a lease nobody else may take. So the first
    takeover is answered with one reconnect a lease later, never at once (no fight). A
    second one within REPLACED_WINDOW_MS means a client really uses this session (a copy
    of the session store elsewhere): then the account is held for an operator."""
    if last_replaced_ms is not None and now_ms - last_replaced_ms < REPLACED_WINDOW_MS:
        return HOLD
    return RESTART
