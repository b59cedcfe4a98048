"""Admin: pairing an account — the current QR (PNG, SVG or text), a pairing code by
phone number, and starting pairing over with a fresh code."""
from __future__ import annotations

import io

import segno
from aiohttp import web

from wasync.http.common import (
    CONTROL, ApiError, call_daemon, json_response, normalize_phone, read_json_object, validate_account_id,
)

FORMATS = {"png": "image/png", "svg": "image/svg+xml", "text": "text/plain"}
# A pairing code takes WhatsApp (neonize) up to a minute; the daemon gives up after 60 s.
PAIR_PHONE_TIMEOUT_S = 65.0

routes = web.RouteTableDef()


def render_qr(code: str, fmt: str) -> bytes:
    """The code as a scannable image; `text` is the raw string (for terminals and tools)."""
    if fmt == "text":
        return code.encode()
    out = io.BytesIO()
    segno.make(code, error="l").save(out, kind=fmt, scale=6, border=4)
    return out.getvalue()


@routes.get("/api/whatsapp/accounts/{accountId}/qr")
async def get_qr(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    fmt = request.query.get("format", "png")
    if fmt not in FORMATS:
        raise ApiError(400, "invalid_format", "format must be one of png, svg, text")
    code = await call_daemon(request, request.app[CONTROL].current_qr, account_id)
    if code is None:
        raise ApiError(404, "no_qr", f"account {account_id} is not pairing (no QR to show); "
                                     "POST /api/whatsapp/regenerate-qr/{accountId} starts pairing over")
    return web.Response(body=render_qr(code, fmt), content_type=FORMATS[fmt],
                        headers={"Cache-Control": "no-store"})


@routes.post("/api/whatsapp/accounts/{accountId}/pair-phone")
async def pair_phone(request: web.Request) -> web.Response:
    account_id = validate_account_id(request.match_info["accountId"])
    body = await read_json_object(request)
    unknown = sorted(set(body) - {"phone"})
    if unknown or "phone" not in body:
        raise ApiError(400, "invalid_body", 'expected {"phone": "<digits>"}')
    phone = normalize_phone(body["phone"])
    code = await call_daemon(request, request.app[CONTROL].pair_phone, account_id, phone,
                             timeout_s=PAIR_PHONE_TIMEOUT_S)
    return json_response({"success": True, "accountId": account_id, "code": code})


@routes.post("/api/whatsapp/regenerate-qr/{accountId}")
async def regenerate_qr(request: web.Request) -> web.Response:
    """Pairing starts over. `{"newPairing": true}` forgets the stored session even of an
    account that works (re-linking on purpose: the phone must scan again)."""
    account_id = validate_account_id(request.match_info["accountId"])
    body = await read_json_object(request)
    if set(body) - {"newPairing"} or not isinstance(body.get("newPairing", False), bool):
        raise ApiError(400, "invalid_body", 'expected no body, or {"newPairing": true | false}')
    await call_daemon(request, request.app[CONTROL].regenerate_qr, account_id, body.get("newPairing", False))
    return json_response({"success": True, "accountId": account_id,
                          "message": "pairing restarted; fetch the new QR in a few seconds"})
