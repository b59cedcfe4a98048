"""What an AccountActor is told (DESIGN.md: every message is a frozen dataclass)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from wasync.actors.reply import Reply


@dataclass(frozen=True)
class Wake:
    """New spool rows for this account (told by the transport's sink), or more to drain."""


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
    """Test-only (WASYNC_DEBUG_FAULTS): raise in a handler, or block in one forever."""

    kind: Literal["raise", "block"]


AccountMsg = Union[Wake, Probe, StopSession, PairPhone, Fault]
