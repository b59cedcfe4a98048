"""What the OwnershipActor is told."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Refresh:
    """Read the account list now (an account was added, removed or changed). A request
    made before the start of a read already finished is answered by that read."""

    requested_s: float  # monotonic time of the request


@dataclass(frozen=True)
class ReadDue:
    """Ticker: the periodic read."""


OwnershipMsg = Union[Refresh, ReadDue]
