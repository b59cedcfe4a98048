"""The Session port: one WhatsApp linked-device connection, real (neonize) or simulated.

The rest of the daemon cannot tell the two apart. A session delivers every event as
(kind, raw protobuf bytes) to an `EventSink` — the spool append, which is the ack
point — on the transport's own thread, and returns at once; `normalize.py` later turns
the bytes into domain values on the account's actor. Nothing else happens on that thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from wasync.runtime.backfill import Direction as HistoryDirection, MessageRef


class EventSink(Protocol):
    def __call__(self, kind: str, raw: bytes) -> None:
        """Make the event durable (spool append) and return. Raising means "not taken":
        the transport must not acknowledge the event, so WhatsApp sends it again."""


@dataclass(frozen=True)
class Capabilities:
    on_demand_history: bool  # can ask the phone for older messages of a chat
    pair_phone: bool  # can pair by phone-number code instead of QR
    history_after: bool = False  # can also ask for messages newer than an anchor (a trailing gap)
    # Sends under a message id the client chose, so a resend after a crash is the same
    # message to WhatsApp, not a second one (whatsmeow can; neonize 0.5.2 does not expose it).
    chosen_message_ids: bool = False


@dataclass(frozen=True)
class SendResult:
    message_id: str
    ts_ms: int


class SessionError(RuntimeError):
    """A session operation failed; `reason` is a stable word for metrics and logs."""

    reason = "unknown"


class NotConnected(SessionError):
    reason = "not_connected"


class InvalidRecipient(SessionError):
    reason = "invalid_recipient"


class NotOnWhatsApp(SessionError):
    reason = "not_on_whatsapp"


class Refused(SessionError):
    """WhatsApp (or the transport) said no to this request as it stands: the account's
    state does not allow it (pairing by code while not pairing), or the input is not
    acceptable. Not sent, and sending it again unchanged cannot help."""

    reason = "refused"


class RateLimited(SessionError):
    reason = "rate_limited"


class CapabilityAbsent(SessionError):
    """The transport cannot do this at all (e.g. on-demand history on neonize 0.5.2)."""

    reason = "capability_absent"


class Session(Protocol):
    account_id: str
    capabilities: Capabilities
    # Set when the transport's own loop ended for good without being asked (a crash, a
    # first connect that failed): the supervisor's liveness check restarts the account.
    failure: Optional[BaseException]

    def start(self) -> None:
        """Begin connecting on the transport's own thread; return at once."""

    def stop(self) -> None:
        """Close the connection and join the transport's threads. Idempotent."""

    def send_text(self, to_jid: str, text: str, message_id: Optional[str] = None,
                  timeout_s: float = 30.0) -> SendResult:
        """Send a text; `message_id` only where `capabilities.chosen_message_ids`. Raises
        NotConnected or RateLimited when it certainly did not go out, InvalidRecipient or
        NotOnWhatsApp or Refused when it never will, and any other SessionError when it may
        have."""

    def mark_read(self, chat_jid: str, sender_jid: Optional[str], message_ids: list[str], ts_ms: int) -> None: ...

    def request_history(self, chat_jid: str, anchor: MessageRef, count: int,
                        direction: HistoryDirection = HistoryDirection.BEFORE) -> None:
        """Ask for up to `count` messages of `chat_jid` older (BEFORE) or newer (AFTER)
        than the anchor; they arrive later, through the sink, as a HistorySync event of
        type ON_DEMAND. Raises CapabilityAbsent where unsupported (no on-demand at all,
        or AFTER without `capabilities.history_after`)."""

    def pair_phone(self, phone: str) -> str:
        """A pairing code for `phone` (only while pairing). Raises CapabilityAbsent."""

    def logout(self) -> None: ...


class SessionFactory(Protocol):
    def open(self, account_id: str, phone: Optional[str], sink: EventSink) -> Session:
        """A new, not yet started session for one account."""

    def forget(self, account_id: str) -> None:
        """Drop what lets the account resume its session, so that the next session opened
        without a phone pairs afresh (re-pairing an account that needs repair)."""
