"""What an AccountActor is told (DESIGN.md: every message is a frozen dataclass)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from wasync.actors.policy.backfill import BackfillRules, RecentRules
from wasync.actors.reply import Reply
from wasync.runtime.backfill import Job, ThreadHistory, Trigger
from wasync.runtime.store.base import Fence


@dataclass(frozen=True)
class Wake:
    """New spool rows for this account (told by the transport's sink), or more to drain;
    `room`: from the writer's Backlog, which had no room for this account's rows before."""

    room: bool = False


@dataclass(frozen=True)
class Probe:
    """The supervisor's liveness check: answered at once with `supervisor_protocol.Facts`
    carrying `seq`. An actor that does not answer within WASYNC_HUNG_AFTER_MS is replaced."""

    seq: int


@dataclass(frozen=True)
class StopSession:
    """Shutdown, step one: stop the session (no new events), hand what is left in the spool
    to the writer, then report `SessionStopped`. The actor keeps running."""


@dataclass(frozen=True)
class PairPhone:
    """A pairing code for `phone`, set on `reply` (str) by a call that runs off the actor's
    thread: pairing can take a minute, and the actor must keep answering probes."""

    phone: str
    reply: Reply


@dataclass(frozen=True)
class Fault:
    """Test-only (WASYNC_DEBUG_FAULTS): raise in a handler, or block in one forever; or
    SIGKILL the process at a point of the next outbox send ("outbox-crash-claimed",
    "outbox-crash-sent": outbox_protocol.ArmCrash)."""

    kind: Literal["raise", "block", "outbox-crash-claimed", "outbox-crash-sent"]


@dataclass(frozen=True)
class Summarize:
    """The ticker: time for the account's periodic [realtime] summary line."""


@dataclass(frozen=True)
class SendWaiting:
    """An outbox item of this account was queued through this instance: send it now."""


@dataclass(frozen=True)
class NewFence:
    """The account's lease epoch moved while this actor ran on (its outbox claims with it)."""

    fence: Fence


@dataclass(frozen=True)
class RunWalk:
    """The scheduler (through the supervisor): walk the account's threads asking WhatsApp
    for history, under the job lock it holds; report `scheduler_protocol.WalkFinished`."""

    run_id: str
    job: Job
    trigger: Trigger
    rules: Union[BackfillRules, RecentRules]
    threads_read: int  # how many threads to read from the store for the plan


@dataclass(frozen=True)
class CancelWalk:
    """The scheduler: the run's time is up (its job lock is about to lapse)."""

    run_id: str
    reason: str


@dataclass(frozen=True)
class PlanRead:
    """The store's thread histories for a walk's plan (read off the actor's thread)."""

    run_id: str
    threads: tuple[ThreadHistory, ...] = ()
    error: Optional[str] = None


@dataclass(frozen=True)
class RequestSent:
    """A history request of a walk went out (`error` None) or could not be sent."""

    run_id: str
    seq: int
    error: Optional[str] = None


@dataclass(frozen=True)
class RequestOverdue:
    """Ticker: the answer to a history request is overdue."""

    run_id: str
    seq: int


AccountMsg = Union[Wake, Probe, StopSession, PairPhone, Fault, Summarize, SendWaiting, NewFence, RunWalk, CancelWalk, PlanRead,
                   RequestSent, RequestOverdue]
