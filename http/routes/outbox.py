"""Sending (SPEC §5): POST /api/whatsapp/send-message queues a text in the durable outbox
and answers with the stored message; the account's outbox actor sends it. Items that may
have been sent (`unknown`) or failed wait for an operator: list them, then resend or
abandon each one."""
from __future__ import annotations

from aiohttp import web

from wasync.http.common import CONTROL, ApiError, call_daemon, json_response, read_json_object, validate_account_id
from wasync.runtime import outbox
from wasync.runtime.outbox import BadSend, Decision, OutboxConflict, OutboxStatus
from wasync.runtime.store.base import NotFound
from wasync.runtime.store.schema import outbox_doc as outbox_api  # the API shows the stored fields

SEND_FIELDS = frozenset({"accountId", "to", "text", "clientMessageId"})
LIST_MAX = 500

routes = web.RouteTableDef()


def parse_send(body: dict) -> tuple[str, str, str, str | None]:
    unknown = sorted(set(body) - SEND_FIELDS)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}; allowed: "
                                             f"{', '.join(sorted(SEND_FIELDS))}")
    missing = [f for f in ("accountId", "to", "text") if f not in body]
    if missing:
        raise ApiError(400, "missing_field", f"required: {', '.join(missing)}")
    account_id = validate_account_id(body["accountId"])
    try:
        return (account_id, outbox.recipient_jid(body["to"]), outbox.message_text(body["text"]),
                outbox.client_message_id(body.get("clientMessageId")))
    except BadSend as exc:
        raise ApiError(400, exc.code, str(exc)) from None


@routes.post("/api/whatsapp/send-message")
async def send_message(request: web.Request) -> web.Response:
    account_id, to_jid, text, client_id = parse_send(await read_json_object(request))
    try:
        item, message, created = await call_daemon(request, request.app[CONTROL].send_message, account_id, to_jid,
                                                   text, client_id)
    except OutboxConflict as exc:
        raise ApiError(409, "client_message_id_reused", str(exc)) from None
    return json_response({"success": True, "created": created, "message": message, "outbox": outbox_api(item)},
                         status=202)


@routes.get("/api/whatsapp/outbox/{accountId}")
async def list_items(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    unknown = sorted(set(request.query) - {"status", "limit"})
    if unknown:
        raise ApiError(400, "unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)}; "
                                                 "allowed: limit, status")
    raw = request.query.get("status", "queued,sending,unknown,failed")
    try:
        statuses = [OutboxStatus(s) for s in raw.split(",")]
    except ValueError:
        raise ApiError(400, "invalid_status", "status must be a comma-separated list of: "
                                              + ", ".join(s.value for s in OutboxStatus)) from None
    limit = request.query.get("limit", "100")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= LIST_MAX:
        raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {LIST_MAX}")
    items = await call_daemon(request, request.app[CONTROL].list_outbox, account_id, statuses, int(limit))
    return json_response({"success": True, "accountId": account_id, "items": [outbox_api(i) for i in items]})


def _item_id(request: web.Request) -> str:
    item_id = request.match_info["itemId"]
    if not (4 <= len(item_id) <= 64 and item_id.isalnum()):
        raise ApiError(400, "invalid_item_id", "an outbox item id is 4-64 letters and digits")
    return item_id


@routes.get("/api/whatsapp/outbox/items/{itemId}")
async def get_item(request: web.Request) -> web.Response:
    item_id = _item_id(request)
    try:
        item = await call_daemon(request, request.app[CONTROL].get_outbox, item_id)
    except NotFound:
        raise ApiError(404, "unknown_item", f"no outbox item {item_id}") from None
    return json_response({"success": True, "item": outbox_api(item)})


@routes.post("/api/whatsapp/outbox/items/{itemId}/decide")
async def decide(request: web.Request) -> web.Response:
    item_id = _item_id(request)
    body = await read_json_object(request)
    try:
        if set(body) != {"action"}:
            raise ValueError
        decision = Decision(body["action"])
    except (ValueError, TypeError):
        raise ApiError(400, "invalid_body", 'expected {"action": "resend" | "abandon"}') from None
    try:
        item = await call_daemon(request, request.app[CONTROL].decide_outbox, item_id, decision)
    except NotFound:
        raise ApiError(404, "unknown_item", f"no outbox item {item_id}") from None
    except OutboxConflict as exc:
        raise ApiError(409, "not_waiting_for_a_decision", str(exc)) from None
    return json_response({"success": True, "item": outbox_api(item)})
