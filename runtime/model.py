"""Domain types that flow through the daemon. Immutable, no I/O.

Field names of `Message` follow the stored schema (SPEC §2) in snake_case; the stores
map them to the camelCase document fields. Times are integers in milliseconds since
the epoch unless a name says otherwise.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Optional, Union


class Direction(str, enum.Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageType(str, enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACT = "contact"
    REACTION = "reaction"
    POLL = "poll"
    OTHER = "other"


MEDIA_TYPES = frozenset(
    {MessageType.IMAGE, MessageType.VIDEO, MessageType.AUDIO, MessageType.DOCUMENT, MessageType.STICKER}
)


class MessageStatus(str, enum.Enum):
    """Delivery state of a message. Ordered: a status never moves backwards, except
    that `failed` is terminal for a message that never reached `sent`."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]


_STATUS_RANK = {
    MessageStatus.QUEUED: 0,
    MessageStatus.FAILED: 1,
    MessageStatus.SENT: 2,
    MessageStatus.DELIVERED: 3,
    MessageStatus.READ: 4,
    MessageStatus.PLAYED: 5,
}


def later_status(a: Optional[MessageStatus], b: Optional[MessageStatus]) -> Optional[MessageStatus]:
    """The status a message has after both `a` and `b` were seen, in any order."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a.rank >= b.rank else b


class SyncSource(str, enum.Enum):
    REALTIME = "realtime"
    HISTORY_SYNC = "history_sync"
    HISTORY_SYNC_IMMEDIATE = "history_sync_immediate"
    BACKFILL = "backfill"
    RECENT_SYNC = "recent_sync"
    OUTBOX = "outbox"


class AccountStatus(str, enum.Enum):
    PAIRING = "pairing"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    DISCONNECTED = "disconnected"
    NEEDS_REPAIR = "needs_repair"
    LOGGED_OUT = "logged_out"


PREVIEW_CHARS = 100


def thread_id(account_id: str, chat_jid: str) -> str:
    """Document id of a thread (SPEC §2): `{accountId}__{chatJid}`."""
    return f"{account_id}__{chat_jid}"


@dataclass(frozen=True)
class Message:
    """One stored WhatsApp message (SPEC §2 `threads/{threadId}/messages/{id}`)."""

    id: str
    account_id: str
    client_jid: str  # the chat: a contact JID or a group JID
    direction: Direction
    message_type: MessageType
    ts_client_ms: int  # the message's own time
    sync_source: SyncSource
    body: Optional[str] = None
    sender_jid: Optional[str] = None  # groups: the participant who wrote it
    sender_alt_jid: Optional[str] = None  # `@lid` senders: the phone-number JID, or vice versa
    push_name: Optional[str] = None
    media_type: Optional[str] = None
    media_url: Optional[str] = None
    media_mimetype: Optional[str] = None
    media_filename: Optional[str] = None
    caption: Optional[str] = None
    status: Optional[MessageStatus] = None
    delivered_at_ms: Optional[int] = None
    read_at_ms: Optional[int] = None
    played_at_ms: Optional[int] = None
    quoted_message_id: Optional[str] = None
    is_group: bool = False
    # Sent through our outbox (runtime/outbox.py): its item, where it is, and why it failed.
    outbox_id: Optional[str] = None
    outbox_status: Optional[str] = None
    send_error: Optional[str] = None

    @property
    def thread_id(self) -> str:
        return thread_id(self.account_id, self.client_jid)

    @property
    def preview(self) -> str:
        """What the thread list shows for this message (first 100 characters)."""
        text = self.body or self.caption or ""
        if not text and self.message_type is not MessageType.TEXT:
            text = f"[{self.message_type.value}]"
        return text[:PREVIEW_CHARS]

    def with_(self, **changes) -> "Message":
        return replace(self, **changes)


@dataclass(frozen=True)
class MessageEdit:
    """`protocolMessage` MESSAGE_EDIT: replaces the text of an existing message."""

    account_id: str
    client_jid: str
    target_id: str
    new_body: Optional[str]
    new_caption: Optional[str]
    edited_at_ms: int


@dataclass(frozen=True)
class MessageRevoke:
    """`protocolMessage` REVOKE ("deleted for everyone")."""

    account_id: str
    client_jid: str
    target_id: str
    revoked_at_ms: int


class ReceiptKind(str, enum.Enum):
    DELIVERED = "delivered"
    READ = "read"
    READ_SELF = "read_self"
    PLAYED = "played"
    PLAYED_SELF = "played_self"
    RETRY = "retry"
    SENDER = "sender"
    SERVER_ERROR = "server_error"
    INACTIVE = "inactive"
    PEER = "peer"
    HISTORY_SYNC = "history_sync"
    OTHER = "other"


# Receipt kinds that move a stored message's status; the others are counted only.
RECEIPT_STATUS = {
    ReceiptKind.DELIVERED: MessageStatus.DELIVERED,
    ReceiptKind.READ: MessageStatus.READ,
    ReceiptKind.READ_SELF: MessageStatus.READ,
    ReceiptKind.PLAYED: MessageStatus.PLAYED,
    ReceiptKind.PLAYED_SELF: MessageStatus.PLAYED,
}


@dataclass(frozen=True)
class Receipt:
    account_id: str
    client_jid: str
    message_ids: tuple[str, ...]
    kind: ReceiptKind
    ts_ms: int
    sender_jid: Optional[str] = None

    @property
    def status(self) -> Optional[MessageStatus]:
        """The status this receipt moves its messages to, or None if it moves none."""
        return RECEIPT_STATUS.get(self.kind)


@dataclass(frozen=True)
class ThreadUpdate:
    """What one batch of messages says about a thread; stores merge these so that the
    thread always describes its newest stored message."""

    account_id: str
    client_jid: str
    last_message_at_ms: Optional[int] = None
    last_message_preview: Optional[str] = None
    last_message_id: Optional[str] = None
    display_name: Optional[str] = None
    is_group: Optional[bool] = None
    last_backfill_at_ms: Optional[int] = None
    # WhatsApp said nothing older than what it sent exists (endOfHistoryTransferType
    # COMPLETE_AND_NO_MORE_MESSAGE_REMAIN_ON_PRIMARY). Only ever becomes true.
    history_complete: Optional[bool] = None
    last_backfill_result: Optional[str] = None  # the last run's word for this thread

    @property
    def thread_id(self) -> str:
        return thread_id(self.account_id, self.client_jid)

    @staticmethod
    def from_message(message: Message, display_name: Optional[str] = None) -> "ThreadUpdate":
        return ThreadUpdate(
            account_id=message.account_id,
            client_jid=message.client_jid,
            last_message_at_ms=message.ts_client_ms,
            last_message_preview=message.preview,
            last_message_id=message.id,
            display_name=display_name,
            is_group=message.is_group,
        )

    def merge(self, other: "ThreadUpdate") -> "ThreadUpdate":
        """Combine two updates of the same thread, order-independently: the newer
        message wins the last-message fields (ties broken by message id)."""
        assert self.thread_id == other.thread_id
        mine = (self.last_message_at_ms or -1, self.last_message_id or "")
        theirs = (other.last_message_at_ms or -1, other.last_message_id or "")
        newest = self if mine >= theirs else other
        return ThreadUpdate(
            account_id=self.account_id,
            client_jid=self.client_jid,
            last_message_at_ms=newest.last_message_at_ms,
            last_message_preview=newest.last_message_preview,
            last_message_id=newest.last_message_id,
            display_name=other.display_name or self.display_name,
            is_group=self.is_group if other.is_group is None else other.is_group,
            last_backfill_at_ms=_max_opt(self.last_backfill_at_ms, other.last_backfill_at_ms),
            history_complete=True if (self.history_complete or other.history_complete) else None,
            last_backfill_result=_later_result(self, other),
        )


def _later_result(a: "ThreadUpdate", b: "ThreadUpdate") -> Optional[str]:
    """The result of the later run (by last_backfill_at_ms; `b` on a tie)."""
    if a.last_backfill_result is None:
        return b.last_backfill_result
    if b.last_backfill_result is None:
        return a.last_backfill_result
    return a.last_backfill_result if (a.last_backfill_at_ms or 0) > (b.last_backfill_at_ms or 0) else b.last_backfill_result


def _max_opt(a: Optional[int], b: Optional[int]) -> Optional[int]:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class HistorySyncType(str, enum.Enum):
    INITIAL_BOOTSTRAP = "initial_bootstrap"
    INITIAL_STATUS_V3 = "initial_status_v3"
    FULL = "full"
    RECENT = "recent"
    PUSH_NAME = "push_name"
    NON_BLOCKING_DATA = "non_blocking_data"
    ON_DEMAND = "on_demand"
    OTHER = "other"


@dataclass(frozen=True)
class HistoryBatch:
    """One `HistorySync` event: messages plus what it says about each conversation."""

    account_id: str
    sync_type: HistorySyncType
    messages: tuple[Message, ...]
    threads: tuple[ThreadUpdate, ...]  # display names (and is_group) per conversation
    chunk_order: int = 0
    progress: Optional[int] = None  # percent, when WhatsApp says
    skipped: int = 0  # entries that were not messages (protocol, stubs, unparsable)


# --- session events -------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    account_id: str


@dataclass(frozen=True)
class Disconnected:
    account_id: str


@dataclass(frozen=True)
class LoggedOut:
    account_id: str
    reason: str  # e.g. LOGGED_OUT, MAIN_DEVICE_GONE, BANNED (ConnectFailureReason names)
    on_connect: bool = False


@dataclass(frozen=True)
class StreamReplaced:
    account_id: str


@dataclass(frozen=True)
class KeepAliveTimeout:
    account_id: str
    error_count: int
    last_success_ms: Optional[int]


@dataclass(frozen=True)
class KeepAliveRestored:
    account_id: str


@dataclass(frozen=True)
class TemporaryBan:
    account_id: str
    code: str
    expires_in_s: int


@dataclass(frozen=True)
class ConnectFailure:
    account_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class OfflineSyncCompleted:
    account_id: str
    count: int


@dataclass(frozen=True)
class PairSuccess:
    account_id: str
    jid: str
    business_name: str = ""
    platform: str = ""


@dataclass(frozen=True)
class PairFailure:
    account_id: str
    error: str


@dataclass(frozen=True)
class QrCode:
    account_id: str
    codes: tuple[str, ...]  # the first one is current; the rest rotate in later


@dataclass(frozen=True)
class UndecryptableMessage:
    account_id: str
    client_jid: str
    message_id: str
    ts_ms: int
    unavailable: bool


SessionEvent = Union[
    Connected,
    Disconnected,
    LoggedOut,
    StreamReplaced,
    KeepAliveTimeout,
    KeepAliveRestored,
    TemporaryBan,
    ConnectFailure,
    OfflineSyncCompleted,
    PairSuccess,
    PairFailure,
    QrCode,
    UndecryptableMessage,
]


class ProtocolKind(str, enum.Enum):
    HISTORY_SYNC_NOTIFICATION = "history_sync_notification"
    APP_STATE_SYNC_KEY_SHARE = "app_state_sync_key_share"
    APP_STATE_SYNC_KEY_REQUEST = "app_state_sync_key_request"
    APP_STATE_FATAL_EXCEPTION = "app_state_fatal_exception_notification"
    INITIAL_SECURITY_NOTIFICATION = "initial_security_notification_setting_sync"
    EPHEMERAL_SETTING = "ephemeral_setting"
    PEER_DATA_OPERATION = "peer_data_operation"
    SENDER_KEY_DISTRIBUTION = "sender_key_distribution"
    EMPTY = "empty"
    OTHER = "other"


@dataclass(frozen=True)
class ProtocolMessage:
    """A message envelope that carries no user content: counted, never stored."""

    account_id: str
    client_jid: str
    message_id: str
    kind: ProtocolKind
    ts_ms: int


@dataclass(frozen=True)
class Ignored:
    """An event the pipeline deliberately drops (counted by `reason`)."""

    account_id: str
    reason: str


# What the normalizer can produce from one raw event.
NormalizedEvent = Union[
    Message, MessageEdit, MessageRevoke, Receipt, HistoryBatch, ProtocolMessage, Ignored, SessionEvent
]
