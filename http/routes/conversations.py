"""Read API (SPEC §4): an account's threads and a thread's messages, newest first.

Paging is by keyset: the opaque `cursor` names the last item returned (its sort time and
id), and the next page starts strictly after it. Messages arriving meanwhile therefore
never shift a page: nothing is repeated or skipped. A thread that gets a new message
while a client pages moves to the top: it is not returned twice, and the next read of
the first page shows it (clients poll the first page for news).
"""
from __future__ import annotations

from typing import Optional

from aiohttp import web

from wasync.http.common import CONTROL, ApiError, call_daemon, json_response, validate_account_id
from wasync.runtime.model import thread_id as make_thread_id
from wasync.runtime.store.schema import BadCursor

DEFAULT_LIMIT, MAX_LIMIT = 50, 500
ORDERS = ("lastMessageAt",)

routes = web.RouteTableDef()


def page_args(request: web.Request, allowed: set[str]) -> tuple[int, Optional[str]]:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise ApiError(400, "unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)}; "
                                                 f"allowed: {', '.join(sorted(allowed))}")
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    cursor = request.query.get("cursor") or None
    if cursor is not None and len(cursor) > 512:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned")
    return int(raw), cursor


async def _page(request: web.Request, fn, *args) -> tuple[list, Optional[str]]:
    try:
        page = await call_daemon(request, fn, *args)
    except BadCursor:
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned") from None
    return page.items, page.next_cursor


@routes.get("/api/whatsapp/threads/{accountId}")
async def threads(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    limit, cursor = page_args(request, {"limit", "cursor", "orderBy"})
    if request.query.get("orderBy", ORDERS[0]) not in ORDERS:
        raise ApiError(400, "invalid_order", f"orderBy must be one of: {', '.join(ORDERS)}")
    items, next_cursor = await _page(request, request.app[CONTROL].list_threads, account_id, limit, cursor)
    return json_response({"success": True, "accountId": account_id, "threads": items, "nextCursor": next_cursor})


@routes.get("/api/whatsapp/messages/{accountId}/{threadId}")
async def messages(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    thread = request.match_info["threadId"]
    # A thread id is `{accountId}__{chatJid}`; a bare chat JID is accepted too.
    if "__" not in thread:
        thread = make_thread_id(account_id, thread)
    if not thread.startswith(account_id + "__") or len(thread) > 256:
        raise ApiError(400, "invalid_thread_id", f"threadId must be {account_id}__<chat JID> (or the chat JID)")
    limit, cursor = page_args(request, {"limit", "cursor"})
    items, next_cursor = await _page(request, request.app[CONTROL].list_messages, account_id, thread, limit, cursor)
    return json_response({"success": True, "accountId": account_id, "threadId": thread, "messages": items,
                          "nextCursor": next_cursor})
