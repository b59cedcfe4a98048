"""The OpenAPI document (http/openapi.py) against the routes it describes.

Fast, in-process: the app's router and the document name the same operations, both ways
(the debug fault route exists only with WASYNC_DEBUG_FAULTS and is not documented); the
document is valid OpenAPI 3.1, every $ref resolves and Schemathesis loads it; GET
/openapi.json serves it without a token; its patterns accept what the validators accept.

Slow, against a real `wasync run` on a real `wasync sim`: Schemathesis generates requests
from the document (its examples, coverage and fuzzing phases; valid and invalid input)
and checks every answer: never a 5xx, status code, content type, headers and body as
documented, invalid input refused, and a secured operation that answered 2xx refuses the
same request without the token. Then every secured operation answers 401 without the
token, and the operations the fuzzer may not aim at the shared accounts are tried by hand.
"""
from __future__ import annotations

import asyncio
import json
import re
import warnings

import jsonschema_rs
import pytest
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemonproc import DaemonProcess
from simproc import SimProcess, wait_for
from test_http_app import AUTH, TOKEN, control, settings as app_settings  # noqa: F401  (control is a fixture)
from wasync.http import openapi
from wasync.http.app import create_app, is_public
from wasync.http.openapi import DOCUMENT
from wasync.runtime.account import BadAccount, check_account_id, check_phone
from wasync.runtime.metrics import Metrics
from wasync.runtime.outbox import BadSend, message_text, new_item_id, recipient_jid
from wasync.runtime.store.schema import OUTBOX_FIELDS

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
# Exists only with WASYNC_DEBUG_FAULTS=true (test-only fault injection): not documented.
DEBUG_ROUTES = {("POST", "/api/admin/debug/fault/{accountId}")}


def documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item if method in METHODS}


def operations() -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, op) for path, item in DOCUMENT["paths"].items()
            for method, op in item.items() if method in METHODS]


def routed(control, **env) -> set[tuple[str, str]]:  # noqa: F811
    """(method, path template) of every route the app serves; aiohttp's automatic HEAD
    for each GET is left out."""
    app = create_app(control, app_settings(ADMIN_TOKEN=TOKEN, **env), Metrics())
    return {(route.method, route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"}


# --- the document and the routes ------------------------------------------------------------


def test_document_and_routes_name_the_same_operations(control):  # noqa: F811
    routes, doc = routed(control), documented()
    assert routes - doc == set(), "routes missing from http/openapi.py"
    assert doc - routes == set(), "documented operations no route serves"


def test_the_debug_route_is_conditional_and_undocumented(control):  # noqa: F811
    assert routed(control, WASYNC_DEBUG_FAULTS="true") == documented() | DEBUG_ROUTES
    assert not DEBUG_ROUTES & documented()


def test_public_operations_are_exactly_the_ones_the_app_lets_through():
    for method, path, op in operations():
        public = op.get("security") == []
        assert public == is_public(path.replace("{name}", "admin.css")), (method, path)
        assert ("401" in op["responses"]) != public, (method, path)
    assert DOCUMENT["security"] == [{"bearerAuth": []}]
    assert DOCUMENT["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "the daemon's ADMIN_TOKEN"}


def test_common_errors_are_on_every_operation_they_can_come_from():
    for method, path, op in operations():
        statuses = set(op["responses"])
        if "requestBody" in op:  # read_json_object: 413 over 64 KiB, 415 without application/json
            assert {"413", "415"} <= statuses, (method, path)
        if method in ("POST", "DELETE") and op.get("security") != []:  # the per-token rate limit
            assert "429" in statuses, (method, path)
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and "$ref" not in response and path != "/ready":
                raise AssertionError(f"{method} {path} {status}: errors use the shared Error responses")
    unauthorized = DOCUMENT["components"]["responses"]["Unauthorized"]
    assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True


def _walk(node, at="#"):
    if isinstance(node, dict):
        for key, value in node.items():
            yield at, key, value
            yield from _walk(value, f"{at}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{at}/{index}")


def _resolve(pointer: str):
    node = DOCUMENT
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_document_is_valid_openapi_31_and_every_ref_resolves():
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    OPENAPI_31_VALIDATOR.validate(DOCUMENT)  # the OpenAPI 3.1 meta-schema Schemathesis ships
    assert json.loads(json.dumps(DOCUMENT)) == DOCUMENT  # plain JSON, nothing the route would stringify
    for at, key, value in _walk(DOCUMENT):
        if key == "$ref":
            assert value.startswith("#/"), at
            _resolve(value)  # KeyError names a dangling reference
    for name, schema in DOCUMENT["components"]["schemas"].items():
        jsonschema_rs.meta.validate(schema)  # JSON Schema 2020-12, the dialect of OpenAPI 3.1
    # Schemathesis reads every operation without an error.
    loaded = schemathesis.openapi.from_dict(DOCUMENT)
    found = [result.ok() for result in loaded.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in found} == documented()


def test_openapi_json_is_served_without_a_token(control):  # noqa: F811
    app = create_app(control, app_settings(ADMIN_TOKEN=TOKEN), Metrics())

    async def main():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            resp = await client.get("/openapi.json")
            return resp.status, resp.content_type, await resp.json()

    status, content_type, body = asyncio.run(main())
    assert (status, content_type) == (200, "application/json")
    assert body == json.loads(json.dumps(DOCUMENT))


def test_outbox_item_schema_is_the_stored_fields():
    schema = DOCUMENT["components"]["schemas"]["OutboxItem"]
    assert set(schema["properties"]) == set(OUTBOX_FIELDS.values())


def _accepted(check, value) -> bool:
    try:
        check(value)
        return True
    except (BadAccount, BadSend):
        return False


def _matches(schema: dict, value: str) -> bool:
    return jsonschema_rs.validator_for(schema).is_valid(value)


@settings(max_examples=300, derandomize=True)
@given(st.text(alphabet="aZ09_-/ é", max_size=70) | st.from_regex(openapi.ACCOUNT_ID_PATTERN, fullmatch=True))
def test_account_id_schema_is_check_account_id(value):
    assert _matches(openapi.ACCOUNT_ID, value) == _accepted(check_account_id, value)


@settings(max_examples=300, derandomize=True)
@given(st.text(alphabet="0123456789 -+\t٣a", max_size=30) | st.from_regex(openapi.PHONE_PATTERN, fullmatch=True))
def test_phone_schema_is_check_phone(value):
    assert _matches(openapi.PHONE, value) == _accepted(check_phone, value)


@settings(max_examples=300, derandomize=True)
@given(st.from_regex(openapi.RECIPIENT_PATTERN, fullmatch=True) | st.text(alphabet="0123456789 -+@.sgu", max_size=40))
def test_recipients_the_schema_accepts_are_accepted(value):
    # The schema spells the usual forms only (a documented subset): accepted => accepted.
    if re.fullmatch(openapi.RECIPIENT_PATTERN, value):
        assert _accepted(recipient_jid, value), value


@settings(max_examples=300, derandomize=True)
@given(st.text(alphabet=" \t\n\x00a\u00a0", max_size=8))
def test_text_schema_is_message_text(value):
    schema = openapi.BODIES["SendMessage"]["properties"]["text"]
    assert _matches(schema, value) == _accepted(message_text, value)


# --- found by hand while writing the document (fixed; kept as regression tests) ---------------


@pytest.mark.parametrize("path", ["/api/whatsapp/threads/a1?limit=%C2%B2",
                                  "/api/whatsapp/messages/a1/a1__15552223333@s.whatsapp.net?limit=%C2%B2",
                                  "/api/whatsapp/outbox/a1?limit=%C2%B2",
                                  "/api/admin/backfill/a1/status?threads=%C2%B2"])
def test_a_superscript_digit_as_a_number_is_400(control, path):  # noqa: F811
    control.store.create_account("a1", None, 1_000)
    app = create_app(control, app_settings(ADMIN_TOKEN=TOKEN), Metrics())

    async def main():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return (await client.get(path, headers=AUTH)).status

    assert asyncio.run(main()) == 400


def _post(control, path: str, raw: bytes) -> tuple[int, dict]:  # noqa: F811
    app = create_app(control, app_settings(ADMIN_TOKEN=TOKEN), Metrics())

    async def main():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            resp = await client.post(path, data=raw, headers={**AUTH, "Content-Type": "application/json"})
            return resp.status, await resp.json()

    return asyncio.run(main())


def test_deeply_nested_json_is_400(control):  # noqa: F811
    status, answer = _post(control, "/api/whatsapp/accounts", b"[" * 5000)
    assert (status, answer["error"]["code"]) == (400, "invalid_json")


def test_text_with_a_lone_surrogate_is_400(control):  # noqa: F811
    control.store.create_account("a1", None, 1_000)
    status, answer = _post(control, "/api/whatsapp/send-message",
                           b'{"accountId": "a1", "to": "15552223333", "text": "x\\ud800y"}')
    assert status == 400, answer


# --- against a running daemon -------------------------------------------------------------------

CONNECTED, PAIRING = "shop1", "shop2"
PHONE1, PHONE2, NOBODY = "15550001111", "15550002222", "15559990000"
ALICE = "15552223333@s.whatsapp.net"
WORLD = {"seed": 17, "notOnWhatsApp": [NOBODY], "accounts": [
    {"phone": PHONE1, "pushName": "Shop One", "paired": True, "chats": [
        {"jid": ALICE, "name": "Alice", "messages": [
            {"id": "OA1", "ts": 1763900000, "text": "hello"},
            {"id": "OA2", "fromMe": True, "ts": 1763900060, "text": "hi Alice", "status": "read"}]},
        {"jid": "120363000000000001@g.us", "name": "Team", "group": True, "messages": [
            {"id": "OA3", "sender": ALICE, "ts": 1763900100, "text": "dinner at 8"}]}]},
    {"phone": PHONE2, "pushName": "Shop Two", "paired": False, "chats": []},
]}
# Operations that would take the shared accounts away from every other case: the fuzzer
# aims them at an account of their own instead (and they are tried by hand below).
DESTRUCTIVE = {"DELETE /api/whatsapp/accounts/{accountId}": "spare-removed",
               "POST /api/whatsapp/regenerate-qr/{accountId}": "spare-repaired"}
# Valid by the document but refused by what it cannot express: a cursor must be one the API
# returned, a thread id must belong to the path's account.
NOT_EXPRESSIBLE = {"GET /api/whatsapp/threads/{accountId}", "GET /api/whatsapp/messages/{accountId}/{threadId}"}
# Outbox items the fixture queues, by (to, clientMessageId): their ids follow from those.
ITEMS = {(to, client_id): new_item_id(CONNECTED, client_id) for to, client_id in ((ALICE, "to-alice"),
                                                                                  (NOBODY, "to-nobody"))}
MAX_EXAMPLES = 100  # per operation and phase: ~20 s of fuzzing, ~3500 requests
# Every response check Schemathesis has but the ones that need several identities or a stateful run.
CHECK_NAMES = [
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
    "response_schema_conformance", "negative_data_rejection", "positive_data_acceptance", "missing_required_header",
    "unsupported_method", "allow_header_conformance", "ignored_auth",
]


def _api(daemon: DaemonProcess, method: str, path: str, body=None):
    return daemon.request(method, path, body, token=TOKEN)


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory):
    base = tmp_path_factory.mktemp("openapi")
    sim = SimProcess(WORLD, base / "sim").start()
    daemon = DaemonProcess(base / "daemon", {
        "WASYNC_TRANSPORT": sim.address, "ADMIN_TOKEN": TOKEN, "WASYNC_MAX_STARTS_PER_SECOND": "50",
        "WASYNC_ADMIN_RATE_PER_MINUTE": "100000"}).start()
    try:
        for account_id, phone in ((CONNECTED, PHONE1), (PAIRING, None), *((spare, None) for spare in
                                                                           DESTRUCTIVE.values())):
            assert _api(daemon, "POST", "/api/whatsapp/accounts", {"accountId": account_id, "phone": phone})[0] == 201
        wait_for(lambda: _api(daemon, "GET", f"/api/whatsapp/accounts/{CONNECTED}")[1]["account"]["status"]
                 == "connected", what=f"{CONNECTED} connected")
        wait_for(lambda: _api(daemon, "GET", f"/api/whatsapp/threads/{CONNECTED}")[1]["threads"], what="history")
        wait_for(lambda: _api(daemon, "GET", f"/api/whatsapp/accounts/{PAIRING}/qr?format=text")[0] == 200,
                 what=f"{PAIRING} pairing")
        for to, client_id in ITEMS:  # one that is sent, one that fails for good (waits for a decision)
            status, sent = _api(daemon, "POST", "/api/whatsapp/send-message", {
                "accountId": CONNECTED, "to": to, "text": f"hello {to}", "clientMessageId": client_id})
            assert status == 202 and sent["outbox"]["id"] == ITEMS[to, client_id], sent
        failed = ITEMS[NOBODY, "to-nobody"]
        wait_for(lambda: _api(daemon, "GET", f"/api/whatsapp/outbox/items/{failed}")[1]["item"]["status"]
                 == "failed", what="the send to nobody failed")
        status, served = daemon.get("/openapi.json")
        assert status == 200 and served == json.loads(json.dumps(DOCUMENT))  # what the fuzzer reads
        yield {"sim": sim, "daemon": daemon, "base_url": f"http://127.0.0.1:{daemon.port}"}
    finally:
        assert daemon.stop() == 0
        sim.stop()


def fuzz_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": 20251130,  # with derandomize below: the same requests on every run
        "suppress-health-check": ["all"],
        # The token is sent by the test itself (so no case "lacks" it), and unknown query
        # parameters are not made up: most routes ignore them by design (only the paged
        # read API refuses them, and OpenAPI cannot say which).
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none",
                       "with-security-parameters": False, "allow-extra-parameters": False},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        # Half of the generated ids name things that exist, so cases get past the 404s.
        "dictionaries": {"accounts": {"values": [CONNECTED, PAIRING]},
                         "items": {"values": list(ITEMS.values())},
                         "threads": {"values": [f"{CONNECTED}__{ALICE}", ALICE]}},
        "parameters": {"path.accountId": {"dictionary": "accounts", "probability": 0.5},
                       "path.itemId": {"dictionary": "items", "probability": 0.5},
                       "path.threadId": {"dictionary": "threads", "probability": 0.5},
                       "body.accountId": {"dictionary": "accounts", "probability": 0.5}},
    })


# The document as this module imported it: the fixture checks that the daemon serves the
# same one, so fuzzing this copy is fuzzing /openapi.json. (Loaded at import because
# Schemathesis' lazy pytest loader, from_fixture, breaks on pytest 9: Node._nodeid is gone.)
api = schemathesis.openapi.from_dict(DOCUMENT, config=fuzz_config())
TOLERATED: set[str] = set()


def _http_parser_limit(response) -> str | None:
    """A request line over 8190 bytes is refused by aiohttp's HTTP parser before any
    middleware runs: a plain-text 400 without X-Request-Id (reported; the server's own
    limit, which the document notes)."""
    if response.status_code == 400 and response.text.startswith("Got more than 8190 bytes when reading"):
        return "a request line over 8190 bytes -> aiohttp's plain-text 400"
    return None


@pytest.mark.slow
@api.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_are_answered_as_documented(case, fuzz_world):
    if case.operation.label in DESTRUCTIVE and (case.path_parameters or {}).get("accountId") in (CONNECTED, PAIRING):
        case.path_parameters["accountId"] = DESTRUCTIVE[case.operation.label]
    base_url = fuzz_world["base_url"]
    response = case.call(base_url=base_url, headers=AUTH, timeout=70)
    tolerated = _http_parser_limit(response)
    if tolerated:
        if tolerated not in TOLERATED:  # said once, so a tolerated answer is never silent
            TOLERATED.add(tolerated)
            warnings.warn(f"tolerated (reported): {tolerated}", stacklevel=1)
        return
    load_all_checks()
    names = [name for name in CHECK_NAMES
             if not (name == "positive_data_acceptance" and case.operation.label in NOT_EXPRESSIBLE)]
    case.validate_response(response, checks=CHECKS.get_by_names(names), headers=AUTH,
                           transport_kwargs={"base_url": base_url, "headers": dict(AUTH)})



def _dummy_path(path: str) -> str:
    return path.format(accountId="nobody", threadId="nobody__15550000000@s.whatsapp.net", itemId="0000",
                       name="admin.css")


@pytest.mark.slow
def test_every_secured_operation_needs_the_token(fuzz_world):
    daemon = fuzz_world["daemon"]
    secured = [(method, path) for method, path, op in operations() if op.get("security") != []]
    assert secured and all(path.startswith("/api/") for _, path in secured)
    for method, path in secured:
        body = {} if method == "POST" else None
        for token in (None, "not-the-token"):
            status, answer = daemon.request(method, _dummy_path(path), body, token=token)
            assert (status, answer["error"]["code"]) == (401, "unauthorized"), (method, path, token)
        # With the token the same request gets past auth (to a 400 or 404 for the dummy ids).
        status, answer = daemon.request(method, _dummy_path(path), body, token=TOKEN)
        assert status != 401 and status < 500, (method, path, status, answer)


@pytest.mark.slow
def test_regenerate_qr_and_remove_on_real_accounts(fuzz_world):
    """The operations the fuzzer aims at accounts of their own, tried on the shared kinds of account."""
    daemon = fuzz_world["daemon"]

    def qr():
        status, code = daemon.get(f"/api/whatsapp/accounts/{PAIRING}/qr?format=text", token=TOKEN)
        return code if status == 200 else None

    before = wait_for(qr, what=f"{PAIRING}'s QR")
    status, answer = _api(daemon, "POST", f"/api/whatsapp/regenerate-qr/{PAIRING}")
    assert status == 200 and answer["accountId"] == PAIRING, answer
    wait_for(lambda: qr() not in (None, before), what="a new QR after regenerate-qr")
    assert _api(daemon, "POST", f"/api/whatsapp/regenerate-qr/{PAIRING}", {"newPairing": "yes"})[0] == 400

    assert _api(daemon, "POST", "/api/whatsapp/accounts", {"accountId": "leaving", "phone": PHONE2})[0] == 201
    status, answer = _api(daemon, "DELETE", "/api/whatsapp/accounts/leaving")
    assert (status, answer) == (200, {"success": True, "accountId": "leaving"})
    assert _api(daemon, "DELETE", "/api/whatsapp/accounts/leaving")[0] == 404
    assert _api(daemon, "GET", "/api/whatsapp/accounts/leaving")[0] == 404


@pytest.mark.slow
def test_pair_phone_for_a_connected_account_is_409(fuzz_world):
    status, answer = _api(fuzz_world["daemon"], "POST", f"/api/whatsapp/accounts/{CONNECTED}/pair-phone",
                          {"phone": PHONE1})
    assert status == 409, (status, answer)


@pytest.mark.slow
def test_pair_phone_with_an_unknown_number_is_a_client_error(fuzz_world):
    def ask():  # past a restart of the session (409 not_connected) left by an earlier test
        status, answer = _api(fuzz_world["daemon"], "POST", f"/api/whatsapp/accounts/{PAIRING}/pair-phone",
                              {"phone": "15550009999"})
        return None if (status, answer["error"]["code"]) == (409, "not_connected") else (status, answer)

    status, answer = wait_for(ask, what=f"{PAIRING} pairing")
    assert (status, answer["error"]["code"]) == (409, "refused"), (status, answer)
