"""The outbox (SPEC §5): an outbound message's life from the API to WhatsApp, as pure rules.

An item is stored `queued` (with its message document, `status: queued`, `syncSource:
outbox`) before anything is sent. The account's OutboxActor claims it under a `Claim`
(the account's lease fence plus the claiming actor's own id), which moves it to
`sending` *before* the transport call, then records what happened:

    queued --claim--> sending --sent--> sent          (WhatsApp accepted it)
                         |----retry---> queued        (certainly not sent: not connected, rate limited)
                         |----failed--> failed        (never will be: invalid recipient, not on WhatsApp)
                         '--ambiguous-> unknown       (may have been sent; an operator decides)

Never sent twice: an item found `sending` under someone else's claim (its claimer died
between claim and record) is resent only where the transport sends under the id we
chose (`item.id`, stored before the first attempt), so WhatsApp sees the same message
again, not a new one; elsewhere (neonize 0.5.2) it ends `unknown`. Both stores apply
these functions inside their own transactions, so the rules live here once.
"""
from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from typing import Optional

from wasync.runtime.backoff import Backoff
from wasync.runtime.model import Direction, Message, MessageStatus, MessageType, SyncSource

MAX_TEXT_CHARS = 4096  # what WhatsApp's own Business API accepts in one text message
CLIENT_ID_MAX = 128


class OutboxStatus(str, enum.Enum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"  # may have been sent: not resent without an operator's word


class BadSend(ValueError):
    """A send request that must not reach WhatsApp; `code` names the mistake for the API."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class OutboxConflict(RuntimeError):
    """The item is not in a state that allows this (a decision on an item that is not
    `unknown` or `failed`; a clientMessageId reused for a different message)."""


@dataclass(frozen=True)
class Claim:
    """Who may act on claimed items: the account's lease fence (holder, epoch) plus the id
    of the claiming actor, so that a restarted actor under the same lease epoch still
    recognises what its dead predecessor left `sending`."""

    holder: str
    epoch: int
    claim_id: str


@dataclass(frozen=True)
class OutboxItem:
    id: str  # the WhatsApp message id asked for; also the queued message document's id
    account_id: str
    to_jid: str
    text: str
    created_at_ms: int
    client_message_id: Optional[str] = None
    status: OutboxStatus = OutboxStatus.QUEUED
    attempts: int = 0
    next_attempt_at_ms: int = 0
    claimed_by: Optional[str] = None
    claim_epoch: Optional[int] = None
    claim_id: Optional[str] = None
    wa_message_id: Optional[str] = None
    sent_at_ms: Optional[int] = None
    error: Optional[str] = None
    updated_at_ms: Optional[int] = None

    @property
    def message_id(self) -> str:
        """The id of its message document: WhatsApp's once sent, ours until then."""
        return self.wa_message_id or self.id

    def message(self) -> Message:
        """Its message document as it should be stored now (SPEC §2 fields)."""
        sent = self.status is OutboxStatus.SENT
        status = {OutboxStatus.SENT: MessageStatus.SENT, OutboxStatus.FAILED: MessageStatus.FAILED}.get(
            self.status, MessageStatus.QUEUED)
        return Message(
            id=self.message_id, account_id=self.account_id, client_jid=self.to_jid, direction=Direction.OUTBOUND,
            message_type=MessageType.TEXT, ts_client_ms=self.sent_at_ms if sent and self.sent_at_ms else
            self.created_at_ms, sync_source=SyncSource.OUTBOX, body=self.text, status=status,
            is_group=self.to_jid.endswith("@g.us"), outbox_id=self.id,
            outbox_status=self.status.value, send_error=self.error)


# --- input (the API checks these before anything is stored) ---------------------------------

_JID = re.compile(r"[0-9]{5,20}@s\.whatsapp\.net|[0-9]{5,20}(-[0-9]{5,20})?@g\.us")
_PHONE = re.compile(r"\+?[0-9][0-9 \-]{3,30}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % CLIENT_ID_MAX)


def recipient_jid(to: object) -> str:
    """A person's phone number ('+1 555-222-3333') or a person's or group's JID, as the JID
    to send to; anything else (broadcast lists, newsletters, other servers) is refused."""
    if not isinstance(to, str):
        raise BadSend("invalid_recipient", "to must be a phone number or a JID string")
    to = to.strip()
    if _JID.fullmatch(to):
        return to
    if _PHONE.fullmatch(to):
        digits = re.sub(r"[ \-]", "", to.removeprefix("+"))
        if 5 <= len(digits) <= 20:
            return f"{digits}@s.whatsapp.net"
    raise BadSend("invalid_recipient", "to must be a phone number (5-20 digits) or a JID ending in "
                                       "@s.whatsapp.net or @g.us")


def message_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadSend("invalid_text", "text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise BadSend("text_too_long", f"text is {len(text)} characters; WhatsApp takes at most {MAX_TEXT_CHARS}")
    if "\x00" in text:
        raise BadSend("invalid_text", "text must not contain NUL characters")
    try:
        text.encode("utf-8")  # what protobuf (neonize) and Firestore need: no lone surrogates
    except UnicodeEncodeError:
        raise BadSend("invalid_text", "text must be valid Unicode (no lone surrogates)") from None
    return text


def client_message_id(value: object) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not _CLIENT_ID.fullmatch(value):
        raise BadSend("invalid_client_message_id",
                      f"clientMessageId must be 1-{CLIENT_ID_MAX} characters of A-Z a-z 0-9 . _ : -")
    return value


def new_item_id(account_id: str, client_id: Optional[str]) -> str:
    """A WhatsApp-style message id ('3EB0' + 20 hex digits, as whatsmeow makes them). With
    a clientMessageId it is derived from it, so a repeated request finds the same item."""
    if client_id is None:
        return "3EB0" + secrets.token_hex(10).upper()
    return "3EB0" + hashlib.sha256(f"{account_id}\x00{client_id}".encode()).hexdigest()[:20].upper()


def same_request(stored: OutboxItem, asked: OutboxItem) -> bool:
    return (stored.account_id, stored.to_jid, stored.text) == (asked.account_id, asked.to_jid, asked.text)


# --- transitions ---------------------------------------------------------------------------------

RETRY = Backoff(initial_ms=2_000, max_ms=300_000, factor=2.0, jitter=0.0)  # pure: no randomness needed


def claimable(item: OutboxItem, claim: Claim, now_ms: int) -> bool:
    """Due `queued` items, and `sending` items whose claimer is gone (not this claim)."""
    if item.status is OutboxStatus.QUEUED:
        return item.next_attempt_at_ms <= now_ms
    return item.status is OutboxStatus.SENDING and item.claim_id != claim.claim_id


def claim(item: OutboxItem, by: Claim, now_ms: int, resend_safe: bool) -> OutboxItem:
    """`item` (claimable) taken by `by`: `sending`, or `unknown` for an orphan that cannot
    be resent safely."""
    if item.status is OutboxStatus.SENDING and not resend_safe:
        return replace(item, status=OutboxStatus.UNKNOWN, updated_at_ms=now_ms,
                       error=f"may have been sent: {item.claimed_by} (epoch {item.claim_epoch}) claimed it and "
                             "stopped before recording the result; this transport cannot resend under the same id")
    return replace(item, status=OutboxStatus.SENDING, attempts=item.attempts + 1, claimed_by=by.holder,
                   claim_epoch=by.epoch, claim_id=by.claim_id, updated_at_ms=now_ms)


def claim_due(items, by: Claim, now_ms: int, limit: int, resend_safe: bool) -> list[OutboxItem]:
    """What one claim takes from an account's waiting items: the claimable ones, oldest
    first, at most `limit`, each after `claim`."""
    ordered = sorted(items, key=lambda i: (i.created_at_ms, i.id))
    return [claim(i, by, now_ms, resend_safe) for i in ordered if claimable(i, by, now_ms)][:max(limit, 0)]


def holds(item: OutboxItem, by: Claim) -> bool:
    return item.status is OutboxStatus.SENDING and item.claim_id == by.claim_id


def sent(item: OutboxItem, wa_message_id: str, ts_ms: int, now_ms: int) -> OutboxItem:
    """A fact, whoever reports it: WhatsApp accepted the message (from any state but sent)."""
    if item.status is OutboxStatus.SENT:
        return item
    return replace(item, status=OutboxStatus.SENT, wa_message_id=wa_message_id, sent_at_ms=ts_ms, error=None,
                   updated_at_ms=now_ms)


def retry(item: OutboxItem, reason: str, now_ms: int) -> OutboxItem:
    return replace(item, status=OutboxStatus.QUEUED, next_attempt_at_ms=now_ms + RETRY.base_ms(max(item.attempts - 1, 0)),
                   error=reason, updated_at_ms=now_ms)


def give_up(item: OutboxItem, status: OutboxStatus, reason: str, now_ms: int) -> OutboxItem:
    assert status in (OutboxStatus.FAILED, OutboxStatus.UNKNOWN)
    return replace(item, status=status, error=reason, updated_at_ms=now_ms)


class Decision(str, enum.Enum):
    RESEND = "resend"  # send it (again): the operator accepts that it may arrive twice
    ABANDON = "abandon"  # never send it: ends `failed`


def decide(item: OutboxItem, decision: Decision, now_ms: int) -> OutboxItem:
    if item.status not in (OutboxStatus.UNKNOWN, OutboxStatus.FAILED):
        raise OutboxConflict(f"outbox item {item.id} is {item.status.value}: only unknown or failed items "
                             "wait for a decision")
    if decision is Decision.ABANDON:
        return replace(item, status=OutboxStatus.FAILED, error=f"abandoned by an operator ({item.error})",
                       updated_at_ms=now_ms)
    return replace(item, status=OutboxStatus.QUEUED, next_attempt_at_ms=0, error=None, claim_id=None,
                   updated_at_ms=now_ms)
