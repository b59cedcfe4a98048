"""The aiohttp application: factory and middlewares (request ids, JSON errors, auth).
What the route modules share is in http/common.py; each resource's routes are one route
table in http/routes/.

Middleware order (outermost first): request id -> headers -> errors -> auth -> rate
limit -> handler. The request id is outermost so that every response, errors included,
carries X-Request-Id and every log line of the request names it; errors wraps auth and
the rate limit so a refused request gets the same JSON error shape as any other.

Hardening: bodies are JSON only (415 otherwise, http/common.py) and at most 64 KiB
(413); mutating requests (POST, DELETE) are rate-limited per token (429 with
Retry-After); no CORS headers are ever sent, so other origins' scripts cannot read the
API (a preflight, which carries no token, gets 401); every response says nosniff and no-referrer, API answers are
not cached. The token is compared in constant time and never logged (log lines carry
the path only, never headers or query strings).

Authentication is deny-by-default: only the probe paths in PUBLIC_PATHS are open;
everything else, including paths that match no route, needs `Authorization: Bearer
<ADMIN_TOKEN>` (so probing unknown paths without the token learns nothing). When
ADMIN_TOKEN is unset the admin routes are open: that is only acceptable because the
daemon refuses to listen on a non-loopback HOST without a token
(`Settings.require_serving`), and `create_app` re-checks it.
"""
from __future__ import annotations

import hmac
import logging
import math
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from aiohttp import web

from wasync.http.common import (
    CONTROL, EXECUTOR, METRICS, REQUEST_ID, SETTINGS, TIMEOUT_S, ApiError, error_response, request_id_var,
)
from wasync.http.ratelimit import RateLimiter
from wasync.runtime import bridge
from wasync.runtime.config import ConfigError, Settings
from wasync.runtime.control import DaemonControl, RunsElsewhere, UnknownAccount
from wasync.runtime.metrics import Metrics
from wasync.runtime.store.base import StoreError
from wasync.runtime.transport.session import (
    CapabilityAbsent, InvalidRecipient, NotConnected, NotOnWhatsApp, RateLimited, Refused, SessionError,
)

log = logging.getLogger("wasync.http")

PUBLIC_PATHS = frozenset({"/health", "/ready", "/diag", "/metrics", "/openapi.json"})
# The admin page's shell and assets hold no data (every datum comes from the admin API,
# with the token the page keeps in the browser session), so they load without a token.
PUBLIC_PREFIXES = ("/admin",)
ADMIN_TIMEOUT_S = 5.0  # how long an admin request waits for the daemon
MAX_BODY_BYTES = 64 * 1024  # admin bodies are tiny; refuse anything bigger early
BRIDGE_WORKERS = 8  # a few slow calls (pairing by code) must not hold every admin request

# How the app is served (the daemon, and the tests): aiohttp's own access log is off, as it
# would write every request line, query strings included, a second time at info level;
# request_id_middleware logs each request once, path only.
RUNNER_OPTIONS = {"access_log": None}

# Accept a caller's id only if it is short and harmless in a log line.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    429: "rate_limited", 500: "internal_error", 503: "unavailable", 504: "timeout",
}


# --- middlewares -------------------------------------------------------------------

_SESSION_ERRORS = {
    NotConnected: (409, "not_connected"),
    InvalidRecipient: (400, "invalid_recipient"),
    NotOnWhatsApp: (400, "not_on_whatsapp"),
    Refused: (409, "refused"),
    RateLimited: (429, "rate_limited"),
    CapabilityAbsent: (501, "not_supported"),
}


@web.middleware
async def request_id_middleware(request: web.Request, handler):
    offered = request.headers.get("X-Request-Id", "")
    rid = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
    token = request_id_var.set(rid)
    request[REQUEST_ID] = rid
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    finally:
        # By route template (never the raw path: ids would make a series per account).
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[METRICS]
        metrics.http_requests.labels(route, request.method, str(status)).inc()
        metrics.http_seconds.labels(route).observe(time.monotonic() - started)
        # One line per request would flood journald (probes every few seconds, an admin
        # page polling every 2 s): debug, unless the daemon failed the request.
        level = logging.WARNING if status >= 500 else logging.DEBUG
        log.log(level, "[http] rid=%s method=%s path=%s status=%s durationMs=%d", rid, request.method,
                request.path, status, (time.monotonic() - started) * 1000)
        request_id_var.reset(token)


@web.middleware
async def headers_middleware(request: web.Request, handler):
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects are not errors
        # Keep meaningful headers (Allow on 405), drop the plain-text body's own.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        code = _STATUS_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason or code, headers)
    except bridge.BridgeTimeout as exc:
        log.warning("[http] rid=%s daemon call timed out: %s", request_id_var.get(), exc)
        return error_response(504, "timeout", f"the daemon did not answer within {exc.timeout_s:g}s",
                              {"Retry-After": "5"})
    except UnknownAccount as exc:
        return error_response(404, "unknown_account", f"no account {exc.args[0] if exc.args else ''}".strip())
    except RunsElsewhere as exc:
        return error_response(409, "runs_elsewhere", str(exc), None if exc.holder else {"Retry-After": "5"})
    except SessionError as exc:
        # What WhatsApp (or the transport) said no to: the account's state, not a bug here.
        status, code = _SESSION_ERRORS.get(type(exc), (502, "session_error"))
        return error_response(status, code, str(exc) or code)
    except StoreError as exc:
        # The store is down or refused: the client may retry later; details stay in the log.
        log.warning("[http] rid=%s store error on %s %s: %s", request_id_var.get(), request.method, request.path, exc)
        return error_response(503, "store_unavailable", "the store is unavailable; retry later", {"Retry-After": "5"})
    except Exception:
        # Full detail goes to the log (with the request id); the client gets the id only.
        log.exception("[http] rid=%s unexpected error on %s %s", request_id_var.get(), request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the daemon log for this request id")


MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _rate_limit_middleware(limiter: RateLimiter):
    @web.middleware
    async def rate_limit_middleware(request: web.Request, handler):
        if request.method in MUTATING and not is_public(request.path):
            # Behind auth: the token is known good (or the API is open on loopback).
            _, _, token = request.headers.get("Authorization", "").partition(" ")
            wait_s = limiter.take(RateLimiter.key(token.strip() or "-"), time.monotonic())
            if wait_s > 0:
                raise ApiError(429, "rate_limited", "too many changes in a short time; slow down",
                               {"Retry-After": str(max(1, math.ceil(wait_s)))})
        return await handler(request)

    return rate_limit_middleware


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or any(path == p or path.startswith(p + "/") for p in PUBLIC_PREFIXES)


def _auth_middleware(admin_token: Optional[str]):
    expected = admin_token.encode() if admin_token else None

    @web.middleware
    async def auth_middleware(request: web.Request, handler):
        if expected is None or is_public(request.path):
            return await handler(request)
        challenge = {"WWW-Authenticate": 'Bearer realm="wasync"'}
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "unauthorized", "missing bearer token", challenge)
        # Constant-time compare: response timing must not leak how much of a guess matched.
        if not hmac.compare_digest(presented.strip().encode(), expected):
            raise ApiError(401, "unauthorized", "invalid token", challenge)
        return await handler(request)

    return auth_middleware


# --- factory -------------------------------------------------------------------------


def create_app(control: DaemonControl, settings: Settings, metrics: Metrics, *,
               admin_timeout_s: float = ADMIN_TIMEOUT_S) -> web.Application:
    if not settings.admin_token and not settings.host_is_loopback:
        # Defence in depth: Settings.require_serving() already stops the daemon here.
        raise ConfigError([f"ADMIN_TOKEN: not set, but HOST={settings.host!r} is not loopback"])
    if not settings.admin_token:
        log.warning("[http] ADMIN_TOKEN is not set: the admin API is open to anyone on this machine "
                    "(HOST=%s is loopback)", settings.host)

    app = web.Application(
        middlewares=[request_id_middleware, headers_middleware, error_middleware, _auth_middleware(settings.admin_token),
                     _rate_limit_middleware(RateLimiter(settings.admin_rate_per_minute))],
        client_max_size=MAX_BODY_BYTES)
    app[CONTROL] = control
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[TIMEOUT_S] = float(admin_timeout_s)
    app.cleanup_ctx.append(_bridge_executor)

    # Imported here, not at the top: route modules are leaves that import http.common.
    from wasync.http.routes import (
        account_health, accounts, admin_page, backfill, conversations, dashboard, debug, health, instances,
        metrics as metrics_routes, openapi, outbox, pairing,
    )

    for module in (health, metrics_routes, accounts, pairing, account_health, dashboard, instances, backfill,
                   conversations, outbox, admin_page, openapi):
        app.add_routes(module.routes)
    if settings.debug_faults:
        app.add_routes(debug.routes)
    return app


async def _bridge_executor(app: web.Application):
    """A bounded executor of the app's own for blocking daemon calls: calls that hang keep
    their threads, and must not take the loop's default executor (DNS, file I/O) down."""
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=BRIDGE_WORKERS, thread_name_prefix="wasync-http-bridge")
    yield
    app[EXECUTOR].shutdown(wait=False, cancel_futures=True)
