"""What the supervisor knows and has decided about each account it watches.

Plain state, owned by the SupervisorActor and touched only on its thread; the actor
(actors/supervisor.py) holds one `Watch` per account and acts on it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

import pykka

from wasync.actors.policy.intensity import MAX_RESTARTS, WINDOW_MS, RestartLog
from wasync.actors.slot import SessionSlot
from wasync.runtime.account import NO_REPAIR, Repair, Supervision
from wasync.runtime.backoff import Backoff
from wasync.runtime.model import AccountStatus as S
from wasync.runtime.store.base import Fence


@dataclass(frozen=True)
class SupervisionPolicy:
    backoff: Backoff = Backoff()
    max_restarts: int = MAX_RESTARTS
    window_ms: int = WINDOW_MS
    hung_after_ms: int = 30_000
    degraded_after_ms: int = 300_000
    stop_child_s: float = 15.0  # a child not stopped by then is abandoned like a hung one
    replaced_retry_s: float = 15.0  # after a StreamReplaced, the one reconnect waits a lease


class Hold(str, enum.Enum):
    """Why no actor runs and none will start until an operator acts."""

    NEEDS_REPAIR = "needs_repair"
    LOGGED_OUT = "logged_out"
    STREAM_REPLACED = "stream_replaced"


@dataclass
class Child:
    ref: pykka.ActorRef
    slot: SessionSlot
    generation: int
    deadline_s: float = 0.0  # while stopping: when to stop waiting for it
    abandoned: bool = False  # its session is being killed from outside


@dataclass
class Watch:
    """What the supervisor knows and decided about one account."""

    account_id: str
    phone: Optional[str] = None
    owned: bool = True
    fence: Optional[Fence] = None  # the lease it runs under (status and repair writes carry it)
    generation: int = 0  # of the newest child
    child: Optional[Child] = None
    stopping: dict[int, Child] = field(default_factory=dict)  # told to stop, not yet gone
    hold: Optional[Hold] = None
    token: int = 0  # bumps invalidate scheduled starts
    start_due: bool = False  # a scheduled start came due while an old child was stopping
    restarts: RestartLog = RestartLog()
    restart_total: int = 0
    probe_seq: int = 0
    probe_sent_s: Optional[float] = None  # monotonic time of the unanswered probe
    probe_ticks: int = 0  # ticks since it was sent
    degraded_restart_ms: Optional[int] = None
    replaced_ms: Optional[int] = None  # the last StreamReplaced, monotonic (policy/escalation.after_replaced)
    fresh_pairing: bool = False  # starts forget the stored session until a pairing succeeds
    repair: Repair = NO_REPAIR
    status: S = S.CONNECTING
    is_degraded: bool = False
    warning: Optional[str] = None
    stored_status: Optional[S] = None  # the status last written to the store
    rejection: Optional[str] = None  # the store refused some of its writes (until the next start)
    published: Optional[Supervision] = None

    def supervision(self, closing: bool) -> Supervision:
        """The decisions as the board shows them. Its spool rows are read by an actor here
        while one runs or stops, or will start (owned, not held, not shutting down)."""
        return Supervision(
            self.account_id, self.status, generation=self.generation, running=self.child is not None,
            ingesting=(self.child is not None or bool(self.stopping)
                       or (self.owned and self.hold is None and not closing)),
            is_degraded=self.is_degraded, warning="; ".join(filter(None, (self.warning, self.rejection))) or None,
            repair=self.repair, restarts=self.restart_total)
