"""HTTP surface (SPEC §4) over real loopback HTTP, plus the bridge and Metrics it uses.

The daemon side is `StoreControl`: a small real DaemonControl backed by a real
SqliteStore (no mocks of HTTP or of the store), with a snapshot the test sets and a gate
that can make its admin calls hang.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import time
from datetime import datetime
from typing import Optional

import pykka
import pytest
from aiohttp.test_utils import TestClient, TestServer

from wasync.http.app import RUNNER_OPTIONS, create_app
from wasync.runtime import bridge, config
from wasync.runtime.config import ConfigError
from wasync.runtime.board import Snapshot, StoreHealth
from wasync.runtime.control import AccountExists, UnknownAccount, queue_message
from wasync.runtime.metrics import Metrics
from wasync.runtime.account import AccountState
from wasync.runtime.model import AccountStatus
from wasync.runtime.store.base import NotFound, StoreError
from wasync.runtime.store.sqlite import SqliteStore

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACCOUNTS = "/api/whatsapp/accounts"


class StoreControl:
    """A real DaemonControl: accounts live in a SqliteStore; the snapshot is whatever
    the test last set. `gate` (when set to an Event) makes admin calls wait on it, and
    `fail` makes them raise, to exercise the timeout and 500 paths."""

    def __init__(self, store: SqliteStore, snapshot: Snapshot):
        self.store = store
        self.snap = snapshot
        self.calls: list[tuple] = []
        self.gate: Optional[threading.Event] = None
        self.fail: Optional[Exception] = None

    def _enter(self, *call) -> None:
        self.calls.append(call)
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail is not None:
            raise self.fail

    def snapshot(self) -> Snapshot:
        return self.snap

    def list_accounts(self) -> list[dict]:
        self._enter("list")
        return self.store.list_accounts()

    def add_account(self, account_id: str, phone: Optional[str]) -> dict:
        self._enter("add", account_id, phone)
        if not self.store.create_account(account_id, phone, int(time.time() * 1000)):
            raise AccountExists(account_id)
        return self.store.get_account(account_id)

    def get_account(self, account_id: str) -> dict:
        self._enter("get", account_id)
        doc = self.store.get_account(account_id)
        if doc is None:
            raise UnknownAccount(account_id)
        return doc

    def _known(self, account_id: str) -> None:
        if self.store.get_account(account_id) is None:
            raise UnknownAccount(account_id)

    def list_threads(self, account_id, limit, cursor):
        self._enter("threads", account_id, limit, cursor)
        self._known(account_id)
        return self.store.list_threads(account_id, limit, cursor)

    def list_messages(self, account_id, thread_id, limit, cursor):
        self._enter("messages", account_id, thread_id, limit, cursor)
        self._known(account_id)
        return self.store.list_messages(account_id, thread_id, limit, cursor)

    def send_message(self, account_id, to_jid, text, client_message_id):
        self._enter("send", account_id, to_jid, text, client_message_id)
        self._known(account_id)
        return queue_message(self.store, account_id, to_jid, text, client_message_id, int(time.time() * 1000))

    def get_outbox(self, item_id):
        self._enter("outbox", item_id)
        item = self.store.get_outbox(item_id)
        if item is None:
            raise NotFound(item_id)
        return item

    def list_outbox(self, account_id, statuses, limit):
        self._enter("outbox-list", account_id)
        self._known(account_id)
        return self.store.list_outbox(account_id, statuses, limit)

    def decide_outbox(self, item_id, decision):
        self._enter("decide", item_id, decision)
        return self.store.decide_outbox(item_id, decision, int(time.time() * 1000))

    def outbox_counts(self):
        return self.store.count_outbox()

    def remove_account(self, account_id: str) -> None:
        self._enter("remove", account_id)
        if not self.store.delete_account(account_id):
            raise UnknownAccount(account_id)


def snapshot(ready=True, connected=True, last_error=None, accounts=(), **kw) -> Snapshot:
    store = StoreHealth("sqlite", connected, checked_at_ms=1_000, last_error=last_error,
                        down_since_ms=None if connected else 500)
    return Snapshot(instance_id="inst-test", ready=ready, mode="active" if ready else "passive", store=store,
                    accounts=tuple(accounts), taken_at_ms=int(time.time() * 1000), **kw)


@pytest.fixture
def control(tmp_path):
    store = SqliteStore(tmp_path / "wasync.db")
    ctl = StoreControl(store, snapshot())
    yield ctl
    if ctl.gate is not None:
        ctl.gate.set()  # release any call a test left hanging before closing the store
    store.close()


def settings(**env):
    return config.load({"INSTANCE_ID": "inst-test", **env})


def serve(control, body, token: Optional[str] = TOKEN, metrics: Optional[Metrics] = None,
          env: Optional[dict] = None, **app_kw):
    """Run `await body(client)` against the app served on a real loopback port."""
    env = {**({"ADMIN_TOKEN": token} if token else {}), **(env or {})}
    app = create_app(control, settings(**env), metrics or Metrics(), **app_kw)

    async def main():
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(**RUNNER_OPTIONS)  # served as the daemon serves it
        async with TestClient(server) as client:
            return await body(client)

    return asyncio.run(main())


async def error_of(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["success"] is False
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["requestId"] == resp.headers["X-Request-Id"]
    return body


# --- probes ---------------------------------------------------------------------------


def test_health_ok(control):
    async def body(client):
        resp = await client.get("/health")
        assert resp.status == 200
        data = await resp.json()
        assert data["ok"] is True and data["instanceId"] == "inst-test"
        assert data["store"] == {"name": "sqlite", "connected": True, "lastError": None,
                                 "checkedAtMs": 1_000, "downSinceMs": None}

    serve(control, body)


def test_health_and_diag_say_store_down_but_answer(control):
    control.snap = snapshot(connected=False, last_error="deadline exceeded", spool_depth=7,
                            spool_oldest_age_ms=4_200,
                            latest_realtime=({"accountId": "a1", "lastRealtimeIngestAt": "2025-01-01T00:00:00.000Z",
                                              "lastRealtimeMessageAt": None, "lastRealtimeError": "store down"},))

    async def body(client):
        resp = await client.get("/health")
        assert resp.status == 200  # liveness: the process is alive
        data = await resp.json()
        assert data["ok"] is True
        assert data["store"]["connected"] is False and data["store"]["lastError"] == "deadline exceeded"
        assert data["store"]["downSinceMs"] == 500

        resp = await client.get("/diag")
        assert resp.status == 200
        diag = await resp.json()
        assert diag["firestoreConnected"] is False
        assert diag["store"]["connected"] is False and diag["store"]["lastError"] == "deadline exceeded"
        assert diag["spool"] == {"depth": 7, "oldestAgeMs": 4_200}
        assert diag["latestRealtime"][0]["accountId"] == "a1"
        assert diag["latestRealtime"][0]["lastRealtimeError"] == "store down"

    serve(control, body)
    assert control.calls == []  # probes read the snapshot only


def test_diag_fields(control):
    control.snap = snapshot(accounts=[AccountState("a1", AccountStatus.CONNECTED, connected=True),
                                      AccountState("a2", AccountStatus.PAIRING)])

    async def body(client):
        resp = await client.get("/diag")
        assert resp.status == 200
        diag = await resp.json()
        assert (diag["ready"], diag["mode"], diag["instanceId"]) == (True, "active", "inst-test")
        assert diag["firestoreConnected"] is True and diag["store"]["name"] == "sqlite"
        assert diag["storeKind"] == "sqlite"
        assert diag["spool"] == {"depth": 0, "oldestAgeMs": None}
        assert diag["latestRealtime"] == []
        assert diag["accounts"] == {"total": 2, "byStatus": {"connected": 1, "pairing": 1}}
        stamp = datetime.fromisoformat(diag["timestamp"].replace("Z", "+00:00"))
        assert abs(stamp.timestamp() - time.time()) < 60
        assert diag["snapshotAgeMs"] >= 0

    serve(control, body)


def test_ready_is_503_until_ready(control):
    control.snap = snapshot(ready=False)

    async def body(client):
        resp = await client.get("/ready")
        assert resp.status == 503
        assert await resp.json() == {"ready": False, "mode": "passive", "instanceId": "inst-test", "leases": 0}
        control.snap = snapshot(ready=True)
        resp = await client.get("/ready")
        assert resp.status == 200
        assert await resp.json() == {"ready": True, "mode": "active", "instanceId": "inst-test", "leases": 0}

    serve(control, body)


METRIC_NAMES = [
    "wasync_messages_ingested_total", "wasync_events_total", "wasync_messages_classified_total",
    "wasync_receipts_total", "wasync_events_ignored_total", "wasync_normalize_errors_total",
    "wasync_spool_quarantined_total", "wasync_spool_depth", "wasync_spool_oldest_age_seconds",
    "wasync_store_flush_batch_size", "wasync_store_flush_seconds", "wasync_store_errors_total",
    "wasync_store_up", "wasync_event_to_spool_seconds", "wasync_event_to_store_seconds", "wasync_sessions",
    "wasync_accounts", "wasync_account_needs_repair", "wasync_actor_failures_total",
]


def test_metrics_endpoint(control):
    metrics = Metrics()
    metrics.messages_ingested.labels("realtime", "text").inc(3)
    control.snap = snapshot(connected=False, spool_depth=5, spool_oldest_age_ms=2_500, accounts=[
        AccountState("a1", AccountStatus.CONNECTED, connected=True),
        AccountState("a2", AccountStatus.CONNECTED, connected=True),
        AccountState("a3", AccountStatus.NEEDS_REPAIR, needs_repair=True),
    ])

    async def body(client):
        resp = await client.get("/metrics")  # no token needed
        assert resp.status == 200
        assert resp.headers["Content-Type"] == Metrics.CONTENT_TYPE
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
        for name in METRIC_NAMES:
            assert f"# TYPE {name} " in text, name
        assert 'wasync_messages_ingested_total{source="realtime",type="text"} 3.0' in text
        assert 'wasync_sessions{state="connected"} 2.0' in text
        assert 'wasync_sessions{state="degraded"} 0.0' in text
        assert "wasync_accounts 3.0" in text
        assert 'wasync_account_needs_repair{account="a3"} 1.0' in text
        assert 'wasync_account_needs_repair{account="a1"} 0.0' in text
        assert "wasync_store_up 0.0" in text and "wasync_spool_depth 5.0" in text
        assert "wasync_spool_oldest_age_seconds 2.5" in text

        # An account that left the snapshot loses its series.
        control.snap = snapshot(accounts=[AccountState("a1", AccountStatus.CONNECTED, connected=True)])
        text = await (await client.get("/metrics")).text()
        assert 'account="a3"' not in text and "wasync_accounts 1.0" in text and "wasync_store_up 1.0" in text

    serve(control, body, metrics=metrics)


def test_metrics_instances_have_their_own_registry():
    a, b = Metrics(), Metrics()  # the global registry would refuse the second one
    a.events.labels("Message").inc()
    assert b'wasync_events_total{kind="Message"} 1.0' in a.render()
    assert b'kind="Message"' not in b.render()
    a.flush_batch.observe(42)
    assert b'wasync_store_flush_batch_size_bucket{le="50.0"} 1.0' in a.render()
    assert b'wasync_event_to_spool_seconds_bucket{le="0.0005"}' in a.render()
    assert b'wasync_event_to_store_seconds_bucket{le="60.0"}' in a.render()


# --- auth -----------------------------------------------------------------------------


def test_admin_requires_the_bearer_token(control):
    async def body(client):
        resp = await client.get(ACCOUNTS)
        await error_of(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        for header in (f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
            resp = await client.get(ACCOUNTS, headers={"Authorization": header})
            await error_of(resp, 401, "unauthorized")
        resp = await client.post(ACCOUNTS, json={"accountId": "a1"})
        await error_of(resp, 401, "unauthorized")
        resp = await client.delete(f"{ACCOUNTS}/a1", headers={"Authorization": "Bearer nope"})
        await error_of(resp, 401, "unauthorized")
        # Deny by default: unknown paths say nothing without the token.
        await error_of(await client.get("/api/nothing-here"), 401, "unauthorized")
        await error_of(await client.get("/api/nothing-here", headers=AUTH), 404, "not_found")

        resp = await client.get(ACCOUNTS, headers={"Authorization": f"bearer {TOKEN}"})
        assert resp.status == 200

    serve(control, body)
    assert control.calls == [("list",)]  # only the authorized call got through


def test_token_is_compared_in_constant_time(control, monkeypatch):
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def body(client):
        assert (await client.get(ACCOUNTS, headers={"Authorization": "Bearer guess"})).status == 401
        assert (await client.get(ACCOUNTS, headers=AUTH)).status == 200

    serve(control, body)
    assert seen == [(b"guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_no_token_on_loopback_leaves_admin_open(control):
    async def body(client):
        assert (await client.get(ACCOUNTS)).status == 200

    serve(control, body, token=None)


def test_no_token_on_public_host_is_refused(control):
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        create_app(control, settings(HOST="0.0.0.0"), Metrics())
    create_app(control, settings(HOST="0.0.0.0", ADMIN_TOKEN=TOKEN), Metrics())  # fine with a token


# --- accounts -------------------------------------------------------------------------


def test_add_list_remove_accounts(control):
    async def body(client):
        resp = await client.get(ACCOUNTS, headers=AUTH)
        assert resp.status == 200 and await resp.json() == {"success": True, "accounts": []}

        resp = await client.post(ACCOUNTS, headers=AUTH, json={"accountId": "sales-1", "phone": "+1 555-222-3333"})
        assert resp.status == 201
        data = await resp.json()
        assert data["success"] is True
        assert data["account"]["accountId"] == "sales-1" and data["account"]["phone"] == "15552223333"
        assert data["account"]["status"] == "connecting"  # it has a phone: it resumes that session
        assert control.store.get_account("sales-1")["phone"] == "15552223333"

        resp = await client.get(ACCOUNTS, headers=AUTH)
        assert [a["accountId"] for a in (await resp.json())["accounts"]] == ["sales-1"]

        resp = await client.delete(f"{ACCOUNTS}/sales-1", headers=AUTH)
        assert resp.status == 200 and await resp.json() == {"success": True, "accountId": "sales-1"}
        assert control.store.get_account("sales-1") is None
        await error_of(await client.delete(f"{ACCOUNTS}/sales-1", headers=AUTH), 404, "unknown_account")

    serve(control, body)


def test_add_requires_an_id(control):
    async def body(client):
        for kwargs in ({"json": {}}, {"data": b""}, {"json": {"phone": "4915112345678"}}):
            await error_of(await client.post(ACCOUNTS, headers=AUTH, **kwargs), 400, "missing_field")
        await error_of(await client.post(ACCOUNTS, headers=AUTH, json={"accountId": None}), 400,
                       "invalid_account_id")

    serve(control, body)
    assert control.calls == []


def test_second_account_with_the_same_phone_is_409_naming_the_holder(control):
    async def body(client):
        assert (await client.post(ACCOUNTS, headers=AUTH, json={"accountId": "a1", "phone": "15552223333"})).status == 201
        body = await error_of(await client.post(ACCOUNTS, headers=AUTH,
                                                json={"accountId": "a2", "phone": "+1 555 222 3333"}),
                              409, "phone_in_use")
        assert "a1" in body["error"]["message"]
        assert control.store.get_account("a2") is None

    serve(control, body)


def test_get_one_account(control):
    control.snap = snapshot(accounts=[AccountState("a1", AccountStatus.CONNECTED, connected=True)])

    async def body(client):
        assert (await client.post(ACCOUNTS, headers=AUTH, json={"accountId": "a1", "phone": "15552223333"})).status == 201
        resp = await client.get(f"{ACCOUNTS}/a1", headers=AUTH)
        assert resp.status == 200
        account = (await resp.json())["account"]
        assert (account["accountId"], account["phone"], account["status"], account["connected"]) == (
            "a1", "15552223333", "connected", True)
        await error_of(await client.get(f"{ACCOUNTS}/nobody", headers=AUTH), 404, "unknown_account")
        await error_of(await client.get(f"{ACCOUNTS}/a1"), 401, "unauthorized")

    serve(control, body)


def test_add_existing_account_is_409(control):
    async def body(client):
        assert (await client.post(ACCOUNTS, headers=AUTH, json={"accountId": "dup"})).status == 201
        await error_of(await client.post(ACCOUNTS, headers=AUTH, json={"accountId": "dup"}), 409, "account_exists")

    serve(control, body)


BAD_ADDS = [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'"just a string"', "invalid_json"),
    (b'{"accountId": "a1", "name": "x"}', "unknown_field"),
    (b'{"accountid": "a1"}', "unknown_field"),
    (b'{"accountId": "bad__id"}', "invalid_account_id"),
    (b'{"accountId": ""}', "invalid_account_id"),
    (b'{"accountId": "' + b"a" * 65 + b'"}', "invalid_account_id"),
    (b'{"accountId": "has space"}', "invalid_account_id"),
    (b'{"accountId": "a/b"}', "invalid_account_id"),
    (b'{"accountId": "caf\\u00e9"}', "invalid_account_id"),
    (b'{"accountId": 123}', "invalid_account_id"),
    (b'{"accountId": ["a"]}', "invalid_account_id"),
    (b'{"accountId": "a1", "phone": "555-abc-1234"}', "invalid_phone"),
    (b'{"accountId": "a1", "phone": "1234"}', "invalid_phone"),
    (b'{"accountId": "a1", "phone": "' + b"1" * 21 + b'"}', "invalid_phone"),
    (b'{"accountId": "a1", "phone": "12+345678"}', "invalid_phone"),
    (b'{"accountId": "a1", "phone": "++15552223333"}', "invalid_phone"),
    (b'{"accountId": "a1", "phone": ""}', "invalid_phone"),
    (b'{"accountId": "a1", "phone": 15552223333}', "invalid_phone"),
    (b'{"accountId": "a1", "phone": "\\u0661\\u0662\\u0663\\u0664\\u0665\\u0666"}', "invalid_phone"),  # Arabic-Indic digits
]


@pytest.mark.parametrize("raw,code", BAD_ADDS, ids=[c + ":" + r[:24].decode("latin-1") for r, c in BAD_ADDS])
def test_bad_add_input_is_400_and_never_reaches_the_daemon(control, raw, code):
    async def body(client):
        resp = await client.post(ACCOUNTS, headers={**AUTH, "Content-Type": "application/json"}, data=raw)
        await error_of(resp, 400, code)

    serve(control, body)
    assert control.calls == []


def test_phone_normalization_accepts_common_spellings(control):
    async def body(client):
        statuses = []
        for n, phone in enumerate(["+49 151 1234 5678", "49-151-12345678", " 4915112345678 ", "12345"]):
            resp = await client.post(ACCOUNTS, headers=AUTH, json={"accountId": f"p{n}", "phone": phone})
            statuses.append(resp.status)
        # One number spelled three ways: the later spellings name the same phone (409).
        assert statuses == [201, 409, 409, 201]

    serve(control, body)
    assert [c[2] for c in control.calls] == ["4915112345678"] * 3 + ["12345"]


@pytest.mark.parametrize("path", ["bad__id", "a%20b", "x" * 65, "caf%C3%A9"])
def test_bad_account_id_in_path_is_400(control, path):
    async def body(client):
        await error_of(await client.delete(f"{ACCOUNTS}/{path}", headers=AUTH), 400, "invalid_account_id")

    serve(control, body)
    assert control.calls == []


def test_body_too_large_is_413(control):
    async def body(client):
        big = json.dumps({"accountId": "a1", "phone": "1" * 100_000}).encode()
        await error_of(await client.post(ACCOUNTS, headers=AUTH, data=big), 413, "payload_too_large")

    serve(control, body)
    assert control.calls == []


def test_method_not_allowed_is_405_json(control):
    async def body(client):
        resp = await client.put(ACCOUNTS, headers=AUTH, json={})
        await error_of(resp, 405, "method_not_allowed")
        assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
        await error_of(await client.post("/health"), 405, "method_not_allowed")  # public path, no token

    serve(control, body)


def test_unexpected_error_is_500_without_details(control, caplog):
    control.fail = RuntimeError("db password is hunter2")

    async def body(client):
        resp = await client.get(ACCOUNTS, headers={**AUTH, "X-Request-Id": "req-500"})
        data = await error_of(resp, 500, "internal_error")
        text = json.dumps(data)
        assert "hunter2" not in text and "Traceback" not in text and "RuntimeError" not in text

    with caplog.at_level(logging.INFO, logger="wasync.http"):
        serve(control, body)
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "rid=req-500" in logged[0].getMessage()
    assert "hunter2" in str(logged[0].exc_info[1])


def test_store_error_is_503(control):
    control.fail = StoreError("sqlite: disk I/O error at /secret/path")

    async def body(client):
        resp = await client.post(ACCOUNTS, headers=AUTH, json={"accountId": "a1"})
        data = await error_of(resp, 503, "store_unavailable")
        assert "/secret/path" not in json.dumps(data) and resp.headers["Retry-After"]

    serve(control, body)


# --- request ids ----------------------------------------------------------------------


def test_request_id_is_echoed_or_generated_and_logged(control, caplog):
    async def body(client):
        resp = await client.get("/health", headers={"X-Request-Id": "abc-123"})
        assert resp.headers["X-Request-Id"] == "abc-123"
        resp = await client.get("/health")
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])
        resp = await client.get("/health", headers={"X-Request-Id": "evil id with spaces"})
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])
        resp = await client.get("/health", headers={"X-Request-Id": "x" * 129})
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])
        resp = await client.get(ACCOUNTS, headers={"X-Request-Id": "denied-1"})  # error responses too
        await error_of(resp, 401, "unauthorized")
        assert resp.headers["X-Request-Id"] == "denied-1"

    with caplog.at_level(logging.DEBUG, logger="wasync.http"):
        serve(control, body)
    lines = [r.getMessage() for r in caplog.records]
    assert any("rid=abc-123" in line and "path=/health" in line and "status=200" in line for line in lines)
    assert any("rid=denied-1" in line and "status=401" in line for line in lines)


# --- a hung daemon never blocks the loop ---------------------------------------------


def test_slow_daemon_call_times_out_while_the_loop_stays_responsive(control):
    control.gate = threading.Event()

    async def body(client):
        started = time.monotonic()
        stuck = asyncio.create_task(client.get(ACCOUNTS, headers=AUTH))
        while not control.calls:  # wait until the admin call is inside the daemon
            await asyncio.sleep(0.01)
        probes = []
        for _ in range(5):
            t0 = time.monotonic()
            resp = await client.get("/health")
            probes.append(time.monotonic() - t0)
            assert resp.status == 200
        assert not stuck.done()  # the admin call is still hanging while /health answered
        assert max(probes) < 0.3
        resp = await stuck
        elapsed = time.monotonic() - started
        data = await error_of(resp, 504, "timeout")
        assert "0.5s" in data["error"]["message"]
        assert 0.45 <= elapsed < 5
        # The bridge executor still has free workers: other admin calls keep working.
        control.gate.set()
        assert (await client.get(ACCOUNTS, headers=AUTH)).status == 200

    serve(control, body, admin_timeout_s=0.5)


# --- bridge ---------------------------------------------------------------------------


def test_bridge_returns_results_and_propagates_errors():
    def add(a, b, *, c=0):
        return a + b + c

    def boom():
        raise KeyError("nope")

    async def main():
        assert await bridge.ask(None, add, 1, 2, c=3) == 6
        with pytest.raises(KeyError):
            await bridge.ask(None, boom)

    asyncio.run(main())


def test_bridge_timeout_does_not_block_the_loop():
    release = threading.Event()

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        t0 = time.monotonic()
        with pytest.raises(bridge.BridgeTimeout) as info:
            await bridge.ask(None, release.wait, 5, timeout_s=0.3)
        assert isinstance(info.value, TimeoutError) and info.value.timeout_s == 0.3
        assert 0.25 <= time.monotonic() - t0 < 2
        assert ticks >= 10  # the loop kept running while the call was stuck
        task.cancel()
        release.set()  # let the thread finish so asyncio.run can shut its executor down

    asyncio.run(main())


class Echo(pykka.ThreadingActor):
    def on_receive(self, message):
        if message.get("sleep"):
            time.sleep(message["sleep"])
        return ("echo", message.get("value"))

    def slow_value(self, value, sleep):
        time.sleep(sleep)
        return value


def test_bridge_asks_pykka_actors():
    ref = Echo.start()

    async def main():
        assert await bridge.ask_actor(ref, {"value": 7}, timeout_s=2) == ("echo", 7)
        with pytest.raises(bridge.BridgeTimeout) as info:
            await bridge.ask_actor(ref, {"sleep": 0.5}, timeout_s=0.1)
        assert info.value.timeout_s == 0.1
        # A proxy call returns a pykka Future; the bridge resolves it off the loop.
        assert await bridge.ask(None, ref.proxy().slow_value, 5, 0.0, timeout_s=2) == 5
        with pytest.raises(bridge.BridgeTimeout):
            await bridge.ask(None, ref.proxy().slow_value, 5, 1.0, timeout_s=0.1)

    try:
        asyncio.run(main())
    finally:
        ref.stop(timeout=10)
