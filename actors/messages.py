"""What the account actors and the supervisor tell each other (DESIGN.md "Supervision").

The supervisor builds pykka's missing links and monitors out of these: children report
failures and session endings, answer the liveness probe with a health report, and name
themselves by actor urn so that news from a replaced actor can be told apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from wasync.actors.policy.health import HealthFacts, Verdict


@dataclass(frozen=True)
class Wake:
    pass


@dataclass(frozen=True)
class PairPhone:
    """Ask for a pairing code for `phone` (answered with the code)."""

    phone: str


@dataclass(frozen=True)
class ChildFailed:
    """Told to the supervisor when an account actor could not go on."""

    account_id: str
    error: str
    urn: Optional[str] = None  # which actor: a report from a replaced one is ignored


@dataclass(frozen=True)
class Probe:
    """The supervisor's liveness ask: answered with a HealthReport told back to it. An
    actor that does not answer within WASYNC_HUNG_AFTER_MS is replaced."""

    seq: int


@dataclass(frozen=True)
class HealthReport:
    account_id: str
    urn: str
    seq: int
    facts: HealthFacts
    verdict: Verdict
    session_failure: Optional[str] = None  # the transport's connection loop died


@dataclass(frozen=True)
class SessionEnded:
    """The session ended for a reason the supervisor must act on (no transport retries it):
    kind "logged_out" | "stream_replaced" | "banned"."""

    account_id: str
    urn: str
    kind: str
    reason: str
    retry_after_ms: Optional[int] = None


@dataclass(frozen=True)
class Paired:
    account_id: str
    urn: str


@dataclass(frozen=True)
class Fault:
    """Fault injection (WASYNC_DEBUG_FAULTS only): "raise" in a handler, or "block" one forever."""

    kind: str
