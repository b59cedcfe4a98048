"""The OpenAPI 3.1 description of the daemon's HTTP surface (SPEC §4-5), served at GET
/openapi.json by http/routes/openapi.py.

It sits next to the routes and is checked against them: tests/test_openapi.py compares
its paths and methods with the app's router both ways (the debug fault route, which
exists only with WASYNC_DEBUG_FAULTS, is left out on purpose), and fuzzes a running
daemon with Schemathesis against it. So a route added, removed or changed without this
file fails a test.

Stored documents (accounts, threads, messages) are open (`additionalProperties: true`):
the store may hold fields this version does not write. What the API computes (probes,
health, dashboard, outbox items) is closed, so a field added there must be added here.
"""
from __future__ import annotations

from importlib import metadata
from typing import Any, Optional

from wasync.runtime.model import AccountStatus, Direction, MessageStatus, MessageType, SyncSource
from wasync.runtime.outbox import CLIENT_ID_MAX, MAX_TEXT_CHARS, Decision, OutboxStatus

try:
    VERSION = metadata.version("wasync")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    VERSION = "0.0.0"

# runtime/account.py check_account_id: 1-64 of A-Z a-z 0-9 _ -, never "__" (thread ids use
# it). Written without look-arounds so that Schemathesis can generate from it.
ACCOUNT_ID_PATTERN = r"^_?(?:[A-Za-z0-9-]+_)*[A-Za-z0-9-]*$"
# runtime/account.py check_phone: 5-20 digits; a leading +, spaces and dashes are ignored.
PHONE_PATTERN = r"^\+?[ -]*(?:[0-9][ -]*){5,20}$"
# runtime/outbox.py recipient_jid: a person's or group's JID, or a phone number. (The code
# also takes runs of separators such as "1  555"; this spells the usual forms.)
RECIPIENT_PATTERN = (r"^(?:[0-9]{5,20}@s\.whatsapp\.net|[0-9]{5,20}(?:-[0-9]{5,20})?@g\.us"
                     r"|\+?[0-9](?:[ -]?[0-9]){4,14})$")
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"  # not blank, no NUL
CLIENT_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
ITEM_ID_PATTERN = r"^[A-Za-z0-9]+$"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: dict) -> dict:
    """`schema` or null (a $ref cannot take a type list, so it becomes an anyOf)."""
    if "type" in schema and "$ref" not in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*types, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _closed(**properties: Any) -> dict:
    """An object the API computes: every property always present, nothing else."""
    return {"type": "object", "properties": properties, "required": sorted(properties), "additionalProperties": False}


def _open(required: tuple[str, ...] = (), **properties: Any) -> dict:
    """A stored document: these fields when present; others may be there too."""
    schema = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        schema["required"] = list(required)
    return schema


STRING = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
NULL_STRING = {"type": ["string", "null"]}
NULL_INT = {"type": ["integer", "null"]}
NULL_BOOL = {"type": ["boolean", "null"]}
# Store timestamps come out as ISO-8601 UTC strings ("2025-11-23T12:00:00.000Z").
TIME = {"type": ["string", "null"], "format": "date-time"}
NULL_OBJECT = {"type": ["object", "null"]}
TRUE = {"const": True}


def _values(enum_type) -> list[str]:
    return [member.value for member in enum_type]


SCHEMAS: dict[str, dict] = {
    "Error": {
        "type": "object",
        "description": "Every error, whatever the status: SPEC §4 `{success: false, error: {code, message}}` plus "
                       "the request id (also in the X-Request-Id header) to find the request in the daemon log.",
        "required": ["success", "error"],
        "additionalProperties": False,
        "properties": {
            "success": {"const": False},
            "error": {**_closed(code=STRING, message=STRING, requestId=STRING)},
        },
    },
    "AccountStatus": {"type": "string", "enum": _values(AccountStatus)},
    "StoreHealth": _closed(name={"type": "string", "examples": ["sqlite", "firestore"]}, connected=BOOL,
                           lastError=NULL_STRING, checkedAtMs=NULL_INT, downSinceMs=NULL_INT),
    "Health": _closed(ok=TRUE, instanceId=STRING, store=_ref("StoreHealth")),
    "Ready": _closed(ready=BOOL, mode={"type": "string", "enum": ["active", "passive"]}, instanceId=STRING,
                     leases={"type": "integer", "minimum": 0}),
    "Diag": _closed(
        ready=BOOL, mode={"type": "string", "enum": ["active", "passive"]}, instanceId=STRING,
        firestoreConnected={"type": "boolean", "description": "true when the configured store answers, "
                                                              "whichever it is (name kept from the old backend)"},
        storeKind=STRING, store=_ref("StoreHealth"),
        spool=_closed(depth={"type": "integer", "minimum": 0}, oldestAgeMs=NULL_INT),
        accounts=_closed(total={"type": "integer", "minimum": 0},
                         byStatus={"type": "object", "additionalProperties": INT}),
        latestRealtime={"type": "array", "items": {
            "type": "object", "required": ["accountId"], "additionalProperties": False,
            "properties": {"accountId": STRING, "lastRealtimeIngestAt": {"type": ["integer", "string"]},
                           "lastRealtimeMessageAt": {"type": ["integer", "string"]}, "lastRealtimeError": STRING}}},
        snapshotAgeMs=NULL_INT, timestamp={"type": "string", "format": "date-time"}),
    "AccountDocument": _open(
        ("accountId",),
        accountId=STRING, enabled=BOOL, phone=NULL_STRING, jid=NULL_STRING, status=_ref("AccountStatus"),
        connected={"type": "boolean", "description": "live, for accounts running on this instance"},
        createdAt=TIME, updatedAt=TIME,
        needsRepair=NULL_BOOL, repairReason=NULL_STRING, repairRequestedAt=TIME,
        lastRealtimeIngestAt=TIME, lastRealtimeMessageAt=TIME, lastRealtimeError=NULL_STRING,
        lastHistorySyncAt=TIME, historySyncCount=NULL_INT,
        lastHistorySyncResult=_or_null(_open(saved=INT, skipped=INT, errors=INT, total=INT, dryRun=BOOL)),
        lastBackfillAt=TIME, lastBackfillStatus={"enum": ["running", "success", "error", None]},
        lastBackfillError=NULL_STRING, lastBackfillStats=NULL_OBJECT, lastBackfillResult=NULL_OBJECT,
        lastAutoBackfillAt=TIME, lastAutoBackfillSuccessAt=TIME, lastAutoBackfillAttemptAt=TIME,
        lastAutoBackfillStatus=NULL_OBJECT,
        autoBackfillLeaseUntil=TIME, autoBackfillLeaseHolder=NULL_STRING, autoBackfillLeaseAcquiredAt=TIME,
        lastRecentSyncAt=TIME, lastRecentSyncResult=NULL_OBJECT,
        recentSyncLeaseUntil=TIME, recentSyncLeaseHolder=NULL_STRING, recentSyncLeaseAcquiredAt=TIME,
        lastAutoRepairAt=TIME),
    "AccountHealth": _closed(
        success=TRUE, accountId=STRING, status=_ref("AccountStatus"), connected=BOOL, lastRealMessageMs=NULL_INT,
        timeSinceLastRealMs=NULL_INT, isDegraded=BOOL, warning=NULL_STRING, needsRepair=BOOL,
        repairReason=NULL_STRING, restarts={"type": "integer", "minimum": 0}, lastProtocolMessageMs=NULL_INT,
        connectedSinceMs=NULL_INT, keepaliveTimeouts={"type": "integer", "minimum": 0},
        undecryptableRecent={"type": "integer", "minimum": 0}, instanceId=STRING, leaseHolder=NULL_STRING,
        leaseEpoch=NULL_INT),
    "OutboxCounts": _closed(queued=INT, sending=INT, unknown=INT),
    "DashboardRow": _closed(
        accountId=STRING, phone=NULL_STRING, status=_ref("AccountStatus"), connected=BOOL, degraded=BOOL,
        warning=NULL_STRING, needsRepair=BOOL, repairReason=NULL_STRING, restarts={"type": "integer", "minimum": 0},
        lastRealMessageMs=NULL_INT, lastHistorySyncAt=TIME, lastRealtimeMessageAt=TIME, lastBackfillAt=TIME,
        lastBackfillStatus=NULL_STRING,
        backfillRunning=_or_null(_closed(job=STRING, threadsDone=INT, threadsTotal=INT, messages=INT)),
        leaseHolder=NULL_STRING, leaseEpoch=NULL_INT, outbox=_ref("OutboxCounts")),
    "Dashboard": {
        "type": "object", "additionalProperties": False,
        "required": ["success", "instanceId", "generatedAtMs", "counts", "accounts"],
        "properties": {
            "success": TRUE, "instanceId": STRING, "generatedAtMs": INT,
            "counts": {"type": "object", "additionalProperties": INT,
                       "description": "accounts per status (every status named, 0 included)"},
            "accounts": {"type": "array", "items": _ref("DashboardRow")},
            "storeError": {"type": "string", "description": "present when the account documents could not be "
                                                            "read: the rows come from this instance alone"},
        },
    },
    "Instance": _closed(instanceId=STRING, self=BOOL, live=BOOL, heartbeatAgeMs=INT, accountsHeld=INT,
                        startedAt=NULL_STRING, version=NULL_STRING),
    "Instances": _closed(success=TRUE, instanceId=STRING, mode={"type": "string", "enum": ["active", "passive"]},
                         leasesHeld=INT, instances={"type": "array", "items": _ref("Instance")}),
    "Thread": _open(
        ("accountId", "clientJid"),
        accountId=STRING, clientJid=STRING, displayName=NULL_STRING, isGroup=BOOL, lastMessageAt=TIME,
        lastMessageAtMs=NULL_INT, lastMessagePreview=NULL_STRING, lastMessageId=NULL_STRING, lastBackfillAt=TIME,
        historyComplete=NULL_BOOL, lastBackfillResult=NULL_STRING, updatedAt=TIME),
    "Message": _open(
        ("id", "accountId", "clientJid"),
        id=STRING, waMessageId=STRING, accountId=STRING, clientJid=STRING,
        direction={"enum": _values(Direction)}, messageType={"enum": _values(MessageType)}, isGroup=BOOL,
        senderJid=NULL_STRING, senderAltJid=NULL_STRING, pushName=NULL_STRING, body=NULL_STRING,
        mediaType=NULL_STRING, mediaUrl=NULL_STRING, mediaMimetype=NULL_STRING, mediaFilename=NULL_STRING,
        caption=NULL_STRING, quotedMessageId=NULL_STRING,
        status={"enum": _values(MessageStatus)}, deliveredAt=TIME, readAt=TIME, playedAt=TIME,
        tsClient={"type": "string", "format": "date-time"}, tsClientMs=INT, tsServer=TIME, createdAt=TIME,
        syncedAt=TIME, syncSource={"enum": _values(SyncSource)},
        editedAt=TIME, revoked=BOOL, revokedAt=TIME,
        outboxId={"type": "string", "description": "sent through the outbox: its item id"},
        outboxStatus={"enum": _values(OutboxStatus)},
        sendError=NULL_STRING),
    "OutboxItem": _closed(
        id=STRING, accountId=STRING, to={"type": "string", "description": "the recipient JID"}, text=STRING,
        createdAtMs=INT, clientMessageId=NULL_STRING, status={"enum": _values(OutboxStatus)}, attempts=INT,
        nextAttemptAtMs=INT, claimedBy=NULL_STRING, claimEpoch=NULL_INT, claimId=NULL_STRING,
        waMessageId=NULL_STRING, sentAtMs=NULL_INT, error=NULL_STRING, updatedAtMs=NULL_INT),
    "MessageRef": _closed(id=STRING, tsMs=INT, fromMe=BOOL),
    "BackfillStatus": _closed(
        success=TRUE, accountId=STRING, leaseHolder=NULL_STRING, leaseEpoch=NULL_INT,
        onDemand={"enum": ["available", "unavailable", "unknown"]},
        running=_or_null(_closed(runId=STRING, job=STRING, trigger=STRING, startedAtMs=INT, threadsTotal=INT,
                                 threadsDone=INT, messages=INT)),
        lock=_closed(holder=NULL_STRING, until=TIME, acquiredAt=TIME),
        last=_closed(status=NULL_STRING, at=TIME, error=NULL_STRING, stats=NULL_OBJECT, result=NULL_OBJECT),
        auto=_closed(lastAutoBackfillAt=TIME, lastAutoBackfillSuccessAt=TIME, lastAutoBackfillAttemptAt=TIME,
                     lastAutoBackfillStatus=NULL_OBJECT),
        recentSync=_closed(lastRecentSyncAt=TIME, lastRecentSyncResult=NULL_OBJECT),
        lastAutoRepairAt=TIME,
        completeness=_closed(threads=INT, complete=INT, incomplete=INT, unreachable=INT, messagesStored=INT),
        threads={"type": "array", "items": _closed(
            threadId=STRING, chatJid=STRING, state={"enum": ["complete", "incomplete", "unreachable"]},
            stored=INT, complete=BOOL, lastMessageAtMs=NULL_INT, oldest=_or_null(_ref("MessageRef")),
            newest=_or_null(_ref("MessageRef")), lastBackfillAtMs=NULL_INT, lastBackfillResult=NULL_STRING)}),
}

# --- request bodies -----------------------------------------------------------------------

ACCOUNT_ID = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": ACCOUNT_ID_PATTERN,
              "description": "1-64 characters of A-Z a-z 0-9 _ -, without `__`"}
PHONE = {"type": "string", "pattern": PHONE_PATTERN,
         "description": "5-20 digits; a leading +, spaces and dashes are ignored", "examples": ["+1 555-000-1111"]}

BODIES = {
    "AddAccount": {
        "type": "object", "required": ["accountId"], "additionalProperties": False,
        "properties": {"accountId": ACCOUNT_ID, "phone": _or_null(PHONE)},
    },
    "PairPhone": {"type": "object", "required": ["phone"], "additionalProperties": False,
                  "properties": {"phone": PHONE}},
    "RegenerateQr": {
        "type": "object", "additionalProperties": False,
        "properties": {"newPairing": {"type": "boolean", "default": False,
                                      "description": "forget the stored session even of an account that works "
                                                     "(the phone must scan again)"}},
    },
    "SendMessage": {
        "type": "object", "required": ["accountId", "to", "text"], "additionalProperties": False,
        "properties": {
            "accountId": ACCOUNT_ID,
            "to": {"type": "string", "pattern": RECIPIENT_PATTERN,
                   "description": "a phone number (5-20 digits; +, spaces and dashes ignored) or a person's "
                                  "(@s.whatsapp.net) or group's (@g.us) JID"},
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": TEXT_PATTERN},
            "clientMessageId": _or_null({"type": "string", "minLength": 1, "maxLength": CLIENT_ID_MAX,
                                         "pattern": CLIENT_ID_PATTERN,
                                         "description": "makes the request idempotent: a repeat returns the "
                                                        "stored item (created false)"}),
        },
    },
    "Decide": {"type": "object", "required": ["action"], "additionalProperties": False,
               "properties": {"action": {"enum": _values(Decision)}}},
    "NoBody": {"type": "object", "additionalProperties": False, "properties": {},
               "description": "no body, or an empty object"},
}
SCHEMAS.update(BODIES)

# --- responses ------------------------------------------------------------------------------

HEADERS = {
    "RequestId": {"description": "the request's id: the caller's X-Request-Id if it was safe to log, else a "
                                 "fresh one", "schema": STRING, "required": True},
    "RetryAfter": {"description": "seconds to wait before retrying", "schema": {"type": "string",
                                                                              "pattern": "^[0-9]+$"}},
}


RETRY_AFTER = {"$ref": "#/components/headers/RetryAfter"}
REQUEST_ID = {"$ref": "#/components/headers/RequestId"}


def _error(description: str, **headers: dict) -> dict:
    return {"description": description, "headers": {"X-Request-Id": REQUEST_ID, **headers},
            "content": {"application/json": {"schema": _ref("Error")}}}


ERRORS = {
    400: ("BadRequest", _error("Bad input (invalid_json, unknown_field, missing_field, invalid_account_id, "
                               "invalid_phone, ...): nothing reached WhatsApp or the store")),
    401: ("Unauthorized", _error("No or wrong `Authorization: Bearer <ADMIN_TOKEN>`",
                                 **{"WWW-Authenticate": {"schema": STRING, "required": True}})),
    404: ("NotFound", _error("No such account (unknown_account) or item")),
    409: ("Conflict", _error("The request conflicts with the current state (see the operation)",
                             **{"Retry-After": RETRY_AFTER})),
    413: ("PayloadTooLarge", _error("The body is over 64 KiB")),
    415: ("UnsupportedMediaType", _error("A request body that is not `Content-Type: application/json`")),
    429: ("RateLimited", _error("Too many mutating admin requests for this token (Retry-After says when to "
                                "retry), or WhatsApp rate-limited the session", **{"Retry-After": RETRY_AFTER})),
    501: ("NotSupported", _error("The account's transport cannot do this")),
    502: ("SessionError", _error("WhatsApp (or the transport) refused the request")),
    503: ("Unavailable", _error("The store is unavailable (store_unavailable); retry later",
                                **{"Retry-After": RETRY_AFTER})),
    504: ("Timeout", _error("The daemon did not answer in time", **{"Retry-After": RETRY_AFTER})),
}

# What most admin calls can answer besides their own errors: the store (503) and the
# daemon's answer time (504); calls with a body add 413/415, and mutating calls 429.
DAEMON = (503, 504)
BODY = (413, 415)
MUTATING = (429,)


def _json(description: str, schema: dict, **headers: dict) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _success(**properties: Any) -> dict:
    return _closed(success=TRUE, **properties)


def _path_param(name: str, schema: dict, description: str, examples: Optional[list] = None) -> dict:
    param = {"name": name, "in": "path", "required": True, "schema": schema, "description": description}
    if examples:
        param["examples"] = {str(i): {"value": v} for i, v in enumerate(examples)}
    return param


def _query(name: str, schema: dict, description: str, **extra: Any) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


ACCOUNT_PARAM = _path_param("accountId", ACCOUNT_ID, "the account's id", ["shop1"])
ITEM_PARAM = _path_param("itemId", {"type": "string", "minLength": 4, "maxLength": 64, "pattern": ITEM_ID_PATTERN},
                         "an outbox item id (4-64 letters and digits)")


def _op(op_id: str, summary: str, tag: str, ok: dict, errors: tuple[int, ...] = (), *, params: tuple = (),
        body: Optional[dict] = None, body_required: bool = True, public: bool = False,
        description: Optional[str] = None) -> dict:
    """One operation. Secured unless `public` (then it overrides the global security and
    cannot answer 401)."""
    statuses = sorted(set(errors) | ({401} if not public else set()))
    op: dict = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if public:
        op["security"] = []
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": body}}}
    answers = {status: _with_request_id(response) for status, response in ok.items()}
    op["responses"] = {**answers, **{str(s): {"$ref": f"#/components/responses/{ERRORS[s][0]}"} for s in statuses}}
    return op


def _with_request_id(response: dict) -> dict:
    """Every answer carries X-Request-Id (http/app.py), except a redirect the handler raises."""
    if "Location" in response.get("headers", {}):
        return response
    return {**response, "headers": {"X-Request-Id": REQUEST_ID, **response.get("headers", {})}}


PAGE_PARAMS = (
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
    _query("cursor", {"type": "string", "maxLength": 512},
           "`nextCursor` of the previous page (opaque); empty or absent: the first page"),
)

PATHS: dict[str, dict] = {
    # --- probes and meta (no token) ---
    "/health": {"get": _op(
        "health", "Liveness, and how the store is", "probes", public=True,
        description="200 while the process answers, even with the store down (the body says so).",
        ok={"200": _json("alive", _ref("Health"))})},
    "/ready": {"get": _op(
        "ready", "Readiness", "probes", public=True,
        ok={"200": _json("ready", _ref("Ready")), "503": _json("not ready yet (or draining)", _ref("Ready"))})},
    "/diag": {"get": _op(
        "diag", "What an operator looks at first", "probes", public=True,
        description="Never fails when the store is down: it says so.",
        ok={"200": _json("diagnostics", _ref("Diag"))})},
    "/metrics": {"get": _op(
        "metrics", "Prometheus exposition", "probes", public=True,
        ok={"200": {"description": "metrics (text format 0.0.4)",
                    "content": {"text/plain": {"schema": STRING}}}})},
    "/openapi.json": {"get": _op(
        "openapi", "This document", "meta", public=True,
        ok={"200": _json("the OpenAPI 3.1 document", {"type": "object"})})},

    # --- the admin page (no token: it holds no data; it reads the admin API with one) ---
    "/admin": {"get": _op(
        "adminPage", "The admin page", "admin page", public=True,
        ok={"200": {"description": "the page shell", "content": {"text/html": {"schema": STRING}}}})},
    "/admin/": {"get": _op(
        "adminPageSlash", "Redirect to /admin", "admin page", public=True,
        ok={"302": {"description": "to /admin", "headers": {"Location": {"schema": {"const": "/admin"},
                                                                          "required": True}}}})},
    "/admin/assets/{name}": {"get": _op(
        "adminAsset", "The admin page's stylesheet and script", "admin page", public=True,
        params=(_path_param("name", {"enum": ["admin.css", "admin.js"]}, "the asset"),),
        ok={"200": {"description": "the asset", "content": {"text/css": {"schema": STRING},
                                                            "text/javascript": {"schema": STRING}}}},
        errors=(404,))},

    # --- accounts ---
    "/api/whatsapp/accounts": {
        "get": _op("listAccounts", "Every stored account, live status laid over", "accounts", errors=DAEMON,
                   ok={"200": _json("the accounts", _success(
                       accounts={"type": "array", "items": _ref("AccountDocument")}))}),
        "post": _op("addAccount", "Add an account (starts pairing, or resumes the phone's session)", "accounts",
                    body=_ref("AddAccount"), errors=(400, 409, *BODY, *MUTATING, *DAEMON),
                    description="409: account_exists, or phone_in_use (the phone belongs to another account).",
                    ok={"201": _json("added", _success(account=_ref("AccountDocument")))}),
    },
    "/api/whatsapp/accounts/{accountId}": {
        "parameters": [ACCOUNT_PARAM],
        "get": _op("getAccount", "One account", "accounts", errors=(400, 404, *DAEMON),
                   ok={"200": _json("the account", _success(account=_ref("AccountDocument")))}),
        "delete": _op("removeAccount", "Stop the account's session and forget the account (messages are kept)",
                      "accounts", errors=(400, 404, *MUTATING, *DAEMON),
                      ok={"200": _json("removed", _success(accountId=STRING))}),
    },
    "/api/whatsapp/accounts/{accountId}/health": {
        "parameters": [ACCOUNT_PARAM],
        "get": _op("accountHealth", "The account's health as supervision sees it", "accounts",
                   errors=(400, 404, *DAEMON), ok={"200": _json("health", _ref("AccountHealth"))}),
    },

    # --- pairing ---
    "/api/whatsapp/accounts/{accountId}/qr": {
        "parameters": [ACCOUNT_PARAM],
        "get": _op("getQr", "The current pairing QR", "pairing", errors=(400, 404, *DAEMON),
                   params=(_query("format", {"enum": ["png", "svg", "text"], "default": "png"},
                                  "png or svg image, or the raw code as text"),),
                   description="404 unknown_account, or no_qr when the account is not pairing.",
                   ok={"200": {"description": "the QR", "headers": {
                       "Cache-Control": {"schema": {"const": "no-store"}, "required": True}},
                       "content": {"image/png": {}, "image/svg+xml": {"schema": STRING},
                                   "text/plain": {"schema": STRING}}}}),
    },
    "/api/whatsapp/accounts/{accountId}/pair-phone": {
        "parameters": [ACCOUNT_PARAM],
        "post": _op("pairPhone", "A pairing code to type on the phone (instead of scanning)", "pairing",
                    body=_ref("PairPhone"), errors=(400, 404, 409, 501, 502, *BODY, *MUTATING, *DAEMON),
                    description="409 not_connected: the account has no session here; 409 refused: WhatsApp "
                                "said no (the account is not pairing, or the number is unknown); 502: the "
                                "transport failed otherwise. Can take up to a minute.",
                    ok={"200": _json("the code", _success(accountId=STRING, code={
                        "type": "string", "examples": ["ABCD-EFGH"]}))}),
    },
    "/api/whatsapp/regenerate-qr/{accountId}": {
        "parameters": [ACCOUNT_PARAM],
        "post": _op("regenerateQr", "Start pairing over (a new pairing for an account that needs repair)",
                    "pairing", body=_ref("RegenerateQr"), body_required=False,
                    errors=(400, 404, 409, *BODY, *MUTATING, *DAEMON),
                    description="409 runs_elsewhere: another instance runs the account.",
                    ok={"200": _json("restarted", _success(accountId=STRING, message=STRING))}),
    },

    # --- conversations (SPEC §4 read API) ---
    "/api/whatsapp/threads/{accountId}": {
        "parameters": [ACCOUNT_PARAM],
        "get": _op("listThreads", "The account's threads, newest first (keyset pages)", "conversations",
                   params=(*PAGE_PARAMS, _query("orderBy", {"enum": ["lastMessageAt"], "default": "lastMessageAt"},
                                                "sort order")),
                   errors=(400, 404, *DAEMON),
                   description="Unknown query parameters are refused (400).",
                   ok={"200": _json("a page", _success(accountId=STRING,
                                                        threads={"type": "array", "items": _ref("Thread")},
                                                        nextCursor=NULL_STRING))}),
    },
    "/api/whatsapp/messages/{accountId}/{threadId}": {
        "parameters": [ACCOUNT_PARAM, _path_param(
            "threadId", {"type": "string", "minLength": 1, "maxLength": 256},
            "`{accountId}__{chatJid}`, or the chat JID alone", ["shop1__15552223333@s.whatsapp.net"])],
        "get": _op("listMessages", "A thread's messages, newest first (keyset pages)", "conversations",
                   params=PAGE_PARAMS, errors=(400, 404, *DAEMON),
                   description="400 invalid_thread_id: a thread id of another account. Unknown query "
                               "parameters are refused (400).",
                   ok={"200": _json("a page", _success(accountId=STRING, threadId=STRING,
                                                        messages={"type": "array", "items": _ref("Message")},
                                                        nextCursor=NULL_STRING))}),
    },

    # --- sending (SPEC §5) ---
    "/api/whatsapp/send-message": {
        "post": _op("sendMessage", "Queue a text; the account's outbox sends it", "outbox",
                    body=_ref("SendMessage"), errors=(400, 404, 409, *BODY, *MUTATING, *DAEMON),
                    description="Stored before anything is sent (`status: queued`, `syncSource: outbox`). 409 "
                                "client_message_id_reused: the clientMessageId named another message.",
                    ok={"202": _json("queued (or, for a repeated clientMessageId, the stored item)", _success(
                        created=BOOL, message=_or_null(_ref("Message")), outbox=_ref("OutboxItem")))}),
    },
    "/api/whatsapp/outbox/{accountId}": {
        "parameters": [ACCOUNT_PARAM],
        "get": _op("listOutbox", "The account's outbox items", "outbox", errors=(400, 404, *DAEMON),
                   params=(_query("status", {"type": "array", "minItems": 1, "items": {"enum": _values(OutboxStatus)},
                                             "default": ["queued", "sending", "unknown", "failed"]},
                                  "statuses to list, comma-separated", style="form", explode=False),
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                                  "at most this many")),
                   ok={"200": _json("the items", _success(accountId=STRING,
                                                           items={"type": "array", "items": _ref("OutboxItem")}))}),
    },
    "/api/whatsapp/outbox/items/{itemId}": {
        "parameters": [ITEM_PARAM],
        "get": _op("getOutboxItem", "One outbox item", "outbox", errors=(400, 404, *DAEMON),
                   ok={"200": _json("the item", _success(item=_ref("OutboxItem")))}),
    },
    "/api/whatsapp/outbox/items/{itemId}/decide": {
        "parameters": [ITEM_PARAM],
        "post": _op("decideOutboxItem", "An operator's word on an item that may have been sent (unknown) or failed",
                    "outbox", body=_ref("Decide"), errors=(400, 404, 409, *BODY, *MUTATING, *DAEMON),
                    description="resend: queue it again (it may arrive twice); abandon: it ends failed. 409 "
                                "not_waiting_for_a_decision: the item is neither unknown nor failed.",
                    ok={"200": _json("decided", _success(item=_ref("OutboxItem")))}),
    },

    # --- backfill ---
    **{path: {"parameters": [ACCOUNT_PARAM], "post": _op(
        op_id, "Start a backfill of the account now", "backfill", body=_ref("NoBody"), body_required=False,
        errors=(400, 404, 409, *BODY, *MUTATING, *DAEMON),
        description="409: backfill_running (here or on another instance), runs_elsewhere, or not_connected.",
        ok={"202": _json("started", _success(message={"const": "Backfill started (runs asynchronously)"},
                                             accountId=STRING, runId=STRING))})}
       for path, op_id in (("/api/whatsapp/backfill/{accountId}", "startBackfill"),
                           ("/api/admin/backfill/{accountId}", "startBackfillAdmin"))},
    "/api/admin/backfill/{accountId}/status": {
        "parameters": [ACCOUNT_PARAM],
        "get": _op("backfillStatus", "What runs now, how the last runs went, and how complete the history is",
                   "backfill", errors=(400, 404, *DAEMON),
                   params=(_query("threads", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 200},
                                  "threads listed (most recent first)"),),
                   ok={"200": _json("the status", _ref("BackfillStatus"))}),
    },

    # --- status ---
    "/api/status/dashboard": {
        "get": _op("dashboard", "Every account in one table", "status",
                   description="Answers from this instance's snapshot alone (storeError) when the store "
                               "cannot be read.",
                   ok={"200": _json("the dashboard", _ref("Dashboard"))}),
    },
    "/api/status/instances": {
        "get": _op("instances", "The instances sharing the accounts, as this one last saw them", "status",
                   ok={"200": _json("the instances", _ref("Instances"))}),
    },
}

DOCUMENT: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "wasync",
        "version": VERSION,
        "description": "Keeps WhatsApp accounts (linked devices) connected and mirrors their conversations into "
                       "a document store. Every path but the probes, this document and the admin page needs "
                       "`Authorization: Bearer <ADMIN_TOKEN>`. Errors are JSON `{success: false, error: {code, "
                       "message, requestId}}`; a method a path does not have answers 405 with `Allow`. (A "
                       "request line over 8190 bytes is refused by the HTTP server itself, before the API: a "
                       "plain-text 400.)",
    },
    "security": [{"bearerAuth": []}],
    "tags": [{"name": name} for name in ("probes", "meta", "admin page", "accounts", "pairing", "conversations",
                                         "outbox", "backfill", "status")],
    "paths": PATHS,
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "description": "the daemon's ADMIN_TOKEN"}},
        "schemas": SCHEMAS,
        "headers": HEADERS,
        "responses": {name: response for name, response in ERRORS.values()},
    },
}
