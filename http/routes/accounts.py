"""Admin: /api/whatsapp/accounts — list, add (starts pairing), remove.

Input is validated here, completely, before anything reaches the daemon (SPEC §4: bad
input never reaches WhatsApp or the store). Calls into the daemon may block, so they go
through the bridge (own executor, timeout -> 504 JSON error, loop stays free).
"""
from __future__ import annotations

import json
from typing import Any, Optional

from aiohttp import web

from wasync.http.app import CONTROL, ApiError, call_daemon, json_response
from wasync.runtime.accounts import BadAccount, check_account_id, check_phone, new_account_id
from wasync.runtime.control import AccountExists, UnknownAccount

ADD_FIELDS = frozenset({"accountId", "phone"})


def validate_account_id(value: Any) -> str:
    try:
        return check_account_id(value)
    except BadAccount as exc:
        raise ApiError(400, exc.code, str(exc)) from None


def normalize_phone(value: Any) -> str:
    try:
        return check_phone(value)
    except BadAccount as exc:
        raise ApiError(400, exc.code, str(exc)) from None


async def read_json_object(request: web.Request) -> dict:
    """The request body as a JSON object; an empty body counts as {}."""
    raw = await request.read()  # over client_max_size -> 413 from aiohttp
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return body


def parse_add(body: dict) -> tuple[str, Optional[str]]:
    unknown = sorted(set(body) - ADD_FIELDS)
    if unknown:
        raise ApiError(400, "unknown_field", "unknown field(s): " + ", ".join(unknown)
                       + "; allowed: accountId, phone")
    account_id = body.get("accountId")
    account_id = new_account_id() if account_id is None else validate_account_id(account_id)
    phone = body.get("phone")
    return account_id, None if phone is None else normalize_phone(phone)


async def list_accounts(request: web.Request) -> web.Response:
    accounts = await call_daemon(request, request.app[CONTROL].list_accounts)
    return json_response({"success": True, "accounts": accounts})


async def add_account(request: web.Request) -> web.Response:
    account_id, phone = parse_add(await read_json_object(request))
    try:
        account = await call_daemon(request, request.app[CONTROL].add_account, account_id, phone)
    except AccountExists:
        raise ApiError(409, "account_exists", f"account {account_id} already exists") from None
    return json_response({"success": True, "account": account}, status=201)


async def remove_account(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    try:
        await call_daemon(request, request.app[CONTROL].remove_account, account_id)
    except UnknownAccount:
        raise ApiError(404, "unknown_account", f"no account {account_id}") from None
    return json_response({"success": True, "accountId": account_id})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/whatsapp/accounts", list_accounts)
    app.router.add_post("/api/whatsapp/accounts", add_account)
    app.router.add_delete("/api/whatsapp/accounts/{accountId}", remove_account)
