"""What the OutboxActor is told (by its account actor, the ticker and the debug route)."""
from __future__ import annotations

from dataclasses import dataclass

from wasync.runtime.store.base import Fence


@dataclass(frozen=True)
class Poke:
    """Items may be waiting: one was queued through this instance, or the poll tick came."""


@dataclass(frozen=True)
class Linked:
    """The account's session connected (sends may go) or lost its connection."""

    connected: bool


@dataclass(frozen=True)
class Refenced:
    """The account's lease epoch moved while its actors ran on: claim under this one."""

    fence: Fence


@dataclass(frozen=True)
class ArmCrash:
    """Test-only (WASYNC_DEBUG_FAULTS): SIGKILL this process at `point` of the next send:
    "claimed" (after the claim, before the transport call) or "sent" (after WhatsApp
    accepted it, before it is recorded)."""

    point: str


CRASH_POINTS = ("claimed", "sent")

OutboxMsg = Poke | Linked | Refenced | ArmCrash
