"""The simulator world's types and vocabulary (docs/simulator.md): frozen, no I/O.

Shared by the parser (world.py) and the generator (generate.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MESSAGE_TYPES = ("text", "image", "video", "audio", "document", "sticker", "location", "contact", "reaction")
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
CAPTIONED_TYPES = frozenset({"image", "video", "document"})  # what WhatsApp lets carry a caption
STATUSES = ("sent", "delivered", "read", "played")
RECEIPT_TYPES = ("delivered", "read", "played")
EVENT_KINDS = ("message", "receipt", "disconnect", "degrade", "logout", "ban", "traffic")
HEALS_ON = ("restart", "repair")
OFFLINE_MODES = ("deliver", "drop")
# neonize's ConnectFailureReason and TemporaryBan.TempBanReason names, kept in step by a
# test (this module must not import neonize, whose import loads a Go library).
LOGOUT_REASONS = tuple("GENERIC LOGGED_OUT TEMP_BANNED MAIN_DEVICE_GONE UNKNOWN_LOGOUT CLIENT_OUTDATED "
                       "BAD_USER_AGENT INTERNAL_SERVER_ERROR EXPERIMENTAL SERVICE_UNAVAILABLE".split())
BAN_CODES = tuple("SEND_TO_TOO_MANY_PEOPLE BLOCKED_BY_USERS CREATED_TOO_MANY_GROUPS "
                  "SENT_TOO_MANY_SAME_MESSAGE BROADCAST_LIST".split())
DEFAULT_MIMETYPES = {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/ogg; codecs=opus",
                     "document": "application/pdf", "sticker": "image/webp"}
HISTORY_SPAN_S = 90 * 86400  # generated history covers this much time before the reference
_REFERENCE_BASE_S, _REFERENCE_RANGE_S = 1_735_689_600, 270 * 86400  # 2025-01-01 + up to 270 days
MAX_ERRORS = 100


class WorldError(ValueError):
    """A world file that cannot be used; one line per problem, each naming its JSON path."""

    def __init__(self, errors: list[str]):
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


# --- the model -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldMessage:
    id: str
    from_me: bool = False
    ts: Optional[int] = None  # seconds; None only in timeline messages (stamped when emitted)
    type: str = "text"
    text: Optional[str] = None  # text body; location name; contact name; reaction emoji
    caption: Optional[str] = None
    mimetype: Optional[str] = None
    filename: Optional[str] = None
    sender: Optional[str] = None  # groups, inbound: the participant's JID
    status: Optional[str] = None  # outbound only: the furthest receipt state reached
    push_name: Optional[str] = None
    target: Optional[str] = None  # reactions: id of the message reacted to
    target_from_me: bool = False  # resolved from the chat when the target is known
    latitude: Optional[float] = None
    longitude: Optional[float] = None


@dataclass(frozen=True)
class Chat:
    jid: str
    name: Optional[str] = None
    group: bool = False
    auto_receipts: bool = True
    messages: tuple[WorldMessage, ...] = ()  # sorted by ts (stable)


@dataclass(frozen=True)
class Generate:
    chats: int
    messages_per_chat: int


@dataclass(frozen=True)
class Account:
    phone: str
    push_name: Optional[str] = None
    paired: bool = True
    initial_sync_per_chat: int = 50
    chats: tuple[Chat, ...] = ()  # the file's chats, then the generated ones
    generate: Optional[Generate] = None

    @property
    def jid(self) -> str:
        return f"{self.phone}@s.whatsapp.net"

    def chat(self, jid: str) -> Optional[Chat]:
        return next((c for c in self.chats if c.jid == jid), None)


@dataclass(frozen=True)
class TimelineEvent:
    at: float  # seconds after the service starts (before --speed scaling)
    account: str
    event: str  # one of EVENT_KINDS
    chat: Optional[str] = None  # message, receipt
    message: Optional[WorldMessage] = None  # message
    offline: str = "deliver"  # message: "drop" loses it for a disconnected client
    ids: tuple[str, ...] = ()  # receipt
    receipt_type: Optional[str] = None  # receipt
    duration: Optional[float] = None  # the file's `for`: disconnect, degrade, ban, traffic
    heals_on: Optional[str] = None  # degrade
    reason: Optional[str] = None  # logout
    code: Optional[str] = None  # ban
    rate: Optional[float] = None  # traffic: messages per second


@dataclass(frozen=True)
class World:
    seed: int
    accounts: tuple[Account, ...]
    timeline: tuple[TimelineEvent, ...]  # sorted by `at` (stable)
    not_on_whatsapp: frozenset[str] = frozenset()  # phone numbers a send to is refused for

    def account(self, phone: str) -> Optional[Account]:
        return next((a for a in self.accounts if a.phone == phone), None)


# --- field checks: each returns the value or raises _Bad saying what was expected -----
