"""How a simulated client and `wasync sim` talk: one websocket per session at
`GET /sim/session`, JSON text frames. Shared by the service (runtime/sim/service.py)
and the client (runtime/transport/simulated.py) so the two cannot drift apart.

Client → service
  {"op": "hello", "phone": str|null, "token": str|null}
        first frame. `phone` names an account whose session exists (world `paired:
        true`); `token` is what a pairing over this service returned (kept under
        SESSIONS_PATH). Neither ⇒ a new pairing: the service sends QR events.
  {"op": "ack", "seq": int}            cumulative: every event up to `seq` is spooled
  {"op": "send", "req": int, "to": jid, "text": str}
  {"op": "mark_read", "req": int, "chat": jid, "ids": [str]}
  {"op": "history", "req": int, "chat": jid, "anchor": str, "count": int, "direction": "before"|"after"}
        up to `count` (at most 50) messages right before (default) or right after the
        anchor message; anything else in "direction" is a bad_request.
  {"op": "pair_phone", "req": int, "phone": str}
  {"op": "logout", "req": int}

Service → client
  {"op": "event", "seq": int, "kind": str, "data": base64}
        one neonize protobuf event (`kind` = its class name, `data` its serialized
        bytes). `seq` counts per account across connections: after a reconnect the
        service sends again, in order, every event not acknowledged yet.
        `seq` 0 (TRANSIENT_SEQ) marks an event about this socket alone: the QR events
        while pairing, and the StreamReplaced / LoggedOut / TemporaryBan sent just
        before a `closing` frame. It is not kept, never sent again and needs no ack
        (acking 0 is harmless); hand it to the sink like any event, never drop it as a
        duplicate. Account events start at 1 and only grow, also across pairings.
        On connect the service sends: the unacknowledged events, `Connected`, after a
        pairing's first connect the history sync (per chunk a historySyncNotification
        Message, then the HistorySync; each chat's end of transfer on the chunk with its
        oldest message, see historysync.py), then the messages that waited for a client and
        `OfflineSyncCompleted` with their count (not while the session is degraded).
        A new pairing is a new session: what the old one left unacknowledged is void.
        The service never sends `Disconnected` (it cannot announce a dropped socket):
        the client reports it when its socket closes.
  {"op": "paired", "phone": str, "token": str}
        after a QR scan: keep `token` to resume this session later.
  {"op": "reply", "req": int, "ok": bool, "result": {...}|null, "error": {"reason": str, "message": str}|null}
        results: send {"id": str, "ts": int seconds}; history {"messages": int}, the
        ON_DEMAND HistorySync event follows (empty for an unknown chat or anchor). Its
        conversation ends its transfer (endOfHistoryTransfer): type
        COMPLETE_AND_NO_MORE_MESSAGE_REMAIN_ON_PRIMARY when a "before" answer reached the
        chat's first message (or is empty, anchored on it), else
        COMPLETE_ON_DEMAND_SYNC_BUT_MORE_MSG_REMAIN_ON_PRIMARY;
        pair_phone {"code": "ABCD-EFGH"}; mark_read and logout {}. A frame the service
        cannot read gets a bad_request reply with "req" null.
  {"op": "closing", "reason": "stream_replaced"|"logged_out"|"banned"|"disconnect"|"shutdown",
   "retry_after_s": float|null}
        sent just before the service closes the socket; says whether and when to reconnect.

A close without "closing" is a dropped connection: reconnect with backoff.
"""
from __future__ import annotations

import base64
import json
from typing import Any

SESSION_PATH = "/sim/session"
TRANSIENT_SEQ = 0  # the seq of events about one socket only: not kept, not re-sent

# Error reasons in replies; the client maps them onto transport.session errors.
NOT_CONNECTED = "not_connected"
INVALID_RECIPIENT = "invalid_recipient"
RATE_LIMITED = "rate_limited"
NOT_ON_WHATSAPP = "not_on_whatsapp"
BAD_REQUEST = "bad_request"

# `direction` of a history request.
HISTORY_BEFORE, HISTORY_AFTER = "before", "after"


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def decode(text: str) -> dict[str, Any]:
    frame = json.loads(text)
    if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
        raise ValueError("a frame is a JSON object with a string 'op'")
    return frame


def event_frame(seq: int, kind: str, raw: bytes) -> str:
    return encode({"op": "event", "seq": seq, "kind": kind, "data": base64.b64encode(raw).decode()})


def event_bytes(frame: dict[str, Any]) -> bytes:
    return base64.b64decode(frame["data"])
