"""What the StoreWriterActor is told."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from wasync.runtime.account import AccountPatch
from wasync.runtime.store.base import Fence
from wasync.runtime.model import Message, MessageEdit, MessageRevoke, Receipt, ThreadUpdate


@dataclass(frozen=True)
class IngestBatch:
    """What a run of one account's spool rows became. `seqs` leave the spool once all of
    it is stored (or quarantined, if the store refuses it for good)."""

    account_id: str
    seqs: tuple[int, ...] = ()
    received_ms: tuple[int, ...] = ()  # per live message: event -> store latency
    messages: tuple[Message, ...] = ()
    receipts: tuple[Receipt, ...] = ()
    edits: tuple[MessageEdit, ...] = ()
    revokes: tuple[MessageRevoke, ...] = ()
    threads: tuple[ThreadUpdate, ...] = ()
    patch: Optional[AccountPatch] = None
    bulk: bool = False  # carries history: the writer's bulk lane, written in slices behind live work
    # A slice cut from a big batch (writer_lanes.split) holds no rows of its own, but if the
    # store refuses it for good the rows it came from are quarantined.
    seqs_if_refused: tuple[int, ...] = ()

    @property
    def ops(self) -> int:
        return (len(self.messages) + len(self.receipts) + len(self.edits) + len(self.revokes) + len(self.threads)
                + (1 if self.patch else 0))


@dataclass(frozen=True)
class AccountUpdate:
    """A decision about an account to store (the supervisor's status and repair flags),
    fenced: the store refuses it once another instance holds the account's lease."""

    account_id: str
    patch: AccountPatch
    fence: Optional[Fence] = None


@dataclass(frozen=True)
class FlushDue:
    """Time to write what waits: from the ticker (≈100 ms after the first batch, or a retry),
    or told by the writer itself (a full batch, or more history to slice): behind what is
    already in its mailbox, so live work that arrived meanwhile is in the next flush."""


@dataclass(frozen=True)
class StoreFlushDue:
    """Ticker: time to have the store write what it holds back (coalesced thread docs)."""


@dataclass(frozen=True)
class StoreAnswers:
    """The store answered a ping again: retry now instead of at the end of the backoff."""


@dataclass(frozen=True)
class Drain:
    """Ask (shutdown): flush now; answers True when nothing is left waiting."""


@dataclass(frozen=True)
class Ping:
    """Ask (the systemd watchdog): answers True; an answer in time means the writer is not stuck."""


WriterMsg = Union[IngestBatch, AccountUpdate, FlushDue, StoreFlushDue, StoreAnswers, Drain, Ping]
