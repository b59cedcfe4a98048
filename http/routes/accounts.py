"""Admin: /api/whatsapp/accounts — list, read one, add (starts pairing), remove.

Input is validated here, completely, before anything reaches the daemon (SPEC §4: bad
input never reaches WhatsApp or the store). Calls into the daemon may block, so they go
through the bridge (own executor, timeout -> 504 JSON error, loop stays free).
"""
from __future__ import annotations

from typing import Optional

from aiohttp import web

from wasync.http import views
from wasync.http.common import (
    CONTROL, ApiError, call_daemon, json_response, normalize_phone, read_json_object, validate_account_id,
)
from wasync.runtime.control import AccountExists, UnknownAccount
from wasync.runtime.store.base import PhoneInUse

ADD_FIELDS = frozenset({"accountId", "phone"})

routes = web.RouteTableDef()


def parse_add(body: dict) -> tuple[str, Optional[str]]:
    unknown = sorted(set(body) - ADD_FIELDS)
    if unknown:
        raise ApiError(400, "unknown_field", "unknown field(s): " + ", ".join(unknown)
                       + "; allowed: accountId, phone")
    if "accountId" not in body:
        # Ids are the operator's: the inbox app and the Firestore paths name accounts by
        # them, so a generated one nobody asked for would be a mistake to clean up later.
        raise ApiError(400, "missing_field", "accountId is required (1-64 characters of A-Z a-z 0-9 _ -)")
    account_id = validate_account_id(body["accountId"])
    phone = body.get("phone")
    return account_id, None if phone is None else normalize_phone(phone)


@routes.get("/api/whatsapp/accounts")
async def list_accounts(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    docs = await call_daemon(request, control.list_accounts)
    # Accounts of this instance's snapshot that are not (or no longer) stored are not listed.
    stored = [v for v in views.merge(docs, control.snapshot()) if v.doc]
    return json_response({"success": True, "accounts": [v.document() for v in stored]})


@routes.post("/api/whatsapp/accounts")
async def add_account(request: web.Request) -> web.Response:
    account_id, phone = parse_add(await read_json_object(request))
    try:
        account = await call_daemon(request, request.app[CONTROL].add_account, account_id, phone)
    except AccountExists:
        raise ApiError(409, "account_exists", f"account {account_id} already exists") from None
    except PhoneInUse as exc:
        raise ApiError(409, "phone_in_use", f"phone {exc.phone} belongs to account {exc.holder}: one WhatsApp "
                                            "session cannot run as two accounts (they would knock each other "
                                            "offline); remove that account first") from None
    return json_response({"success": True, "account": account}, status=201)


@routes.get("/api/whatsapp/accounts/{accountId}")
async def get_account(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    control = request.app[CONTROL]
    doc = await call_daemon(request, control.get_account, account_id)
    return json_response({"success": True, "account": views.one(account_id, doc, control.snapshot()).document()})


@routes.delete("/api/whatsapp/accounts/{accountId}")
async def remove_account(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    try:
        await call_daemon(request, request.app[CONTROL].remove_account, account_id)
    except UnknownAccount:
        raise ApiError(404, "unknown_account", f"no account {account_id}") from None
    return json_response({"success": True, "accountId": account_id})
