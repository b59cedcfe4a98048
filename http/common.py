"""What the route modules share: the app keys, JSON responses and errors, reading and
checking request input, and calling the daemon without blocking the loop."""
from __future__ import annotations

import contextvars
import enum
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Optional

from aiohttp import web

from wasync.runtime import bridge
from wasync.runtime.account import BadAccount, check_account_id, check_phone
from wasync.runtime.config import Settings
from wasync.runtime.control import DaemonControl
from wasync.runtime.metrics import Metrics

CONTROL = web.AppKey("control", DaemonControl)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
TIMEOUT_S = web.AppKey("admin_timeout_s", float)
REQUEST_ID = web.RequestKey("request_id", str)

# The current request's id, for log lines written anywhere below the middleware.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("wasync_request_id", default="-")


class ApiError(Exception):
    """An error the client should see as `{success: false, error: {code, message}}`."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _json_default(value: Any) -> Any:
    # Store documents are JSON-safe already; this only covers stray datetimes/enums.
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def json_response(body: Any, status: int = 200, headers: Optional[dict] = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def error_response(status: int, code: str, message: str, headers: Optional[dict] = None) -> web.Response:
    body = {"success": False, "error": {"code": code, "message": message, "requestId": request_id_var.get()}}
    return json_response(body, status=status, headers=headers)


async def call_daemon(request: web.Request, fn, *args: Any, timeout_s: Optional[float] = None) -> Any:
    """Run a blocking DaemonControl method through the bridge (own executor; the app's
    admin timeout unless the route knows its call takes longer)."""
    app = request.app
    return await bridge.ask(app[EXECUTOR], fn, *args, timeout_s=timeout_s or app[TIMEOUT_S])


# --- input -------------------------------------------------------------------------------


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
    """The request body as a JSON object; an empty body counts as {}. A body must say it
    is JSON (415 otherwise): a form post from another site is refused before it is read."""
    raw = await request.read()  # over client_max_size -> 413 from aiohttp
    if not raw.strip():
        return {}
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "request bodies must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body nests too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return body
