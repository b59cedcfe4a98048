"""GET /api/whatsapp/accounts/{accountId}/health and GET /api/status/dashboard (SPEC §4)
over real loopback HTTP.

The daemon side is `StoreControl`: a small real DaemonControl whose account documents
live in a real SqliteStore and whose snapshot is whatever the test sets (no mocks of
HTTP or of the store). Its `list_accounts` merges live status into the documents the
way the daemon's does.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
import sqlite3
import threading
from typing import Optional

import pytest
from aiohttp.test_utils import TestClient, TestServer

from store_fixtures import plant_account
from wasync.http.app import create_app
from wasync.runtime import config
from wasync.runtime.account import AccountState
from wasync.runtime.board import InstanceView, LeaseView, Snapshot, StoreHealth
from wasync.runtime.metrics import Metrics
from wasync.runtime.model import AccountStatus
from wasync.runtime.store.base import StoreError
from wasync.runtime.store.schema import iso, ms_to_dt, new_account_doc
from wasync.runtime.store.sqlite import SqliteStore

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INSTANCE = "inst-test"
NOW_MS = 1_700_000_100_000  # the snapshot's taken_at_ms
DASHBOARD = "/api/status/dashboard"


def health_path(account_id: str) -> str:
    return f"/api/whatsapp/accounts/{account_id}/health"


class StoreControl:
    """A real DaemonControl for the two read endpoints: documents in a SqliteStore, the
    snapshot set by the test. `gate` (an Event) makes list_accounts wait on it; `fail`
    makes it raise."""

    def __init__(self, store: SqliteStore):
        self.store = store
        self.snap = snapshot()
        self.calls = 0
        self.gate: Optional[threading.Event] = None
        self.fail: Optional[Exception] = None

    def snapshot(self) -> Snapshot:
        return self.snap

    def list_accounts(self) -> list[dict]:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        return self.store.list_accounts()

    def outbox_counts(self) -> dict:
        return self.store.count_outbox()

    def add_doc(self, account_id: str, phone: Optional[str] = None, **fields) -> None:
        doc = new_account_doc(account_id, phone, ms_to_dt(NOW_MS - 3_600_000))
        plant_account(self.store, {**doc, **fields})


def snapshot(*accounts: AccountState) -> Snapshot:
    return Snapshot(instance_id=INSTANCE, ready=True, mode="active", store=StoreHealth("sqlite", True),
                    accounts=tuple(accounts), taken_at_ms=NOW_MS)


def state(account_id: str, status: AccountStatus, **kw) -> AccountState:
    kw.setdefault("connected", status in (AccountStatus.CONNECTED, AccountStatus.DEGRADED))
    return AccountState(account_id=account_id, status=status, **kw)


@pytest.fixture
def control(tmp_path):
    store = SqliteStore(tmp_path / "wasync.db")
    ctl = StoreControl(store)
    yield ctl
    if ctl.gate is not None:
        ctl.gate.set()  # release a call a test left hanging before closing the store
    store.close()


def serve(control, body, token: Optional[str] = TOKEN, **app_kw):
    """Run `await body(client)` against the app served on a real loopback port."""
    env = {"INSTANCE_ID": INSTANCE, **({"ADMIN_TOKEN": token} if token else {})}
    app = create_app(control, config.load(env), Metrics(), **app_kw)

    async def main():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await body(client)

    return asyncio.run(main())


def get_json(control, path: str, status: int = 200, **app_kw) -> dict:
    async def body(client):
        resp = await client.get(path, headers=AUTH)
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        return await resp.json()

    return serve(control, body, **app_kw)


def assert_error(body: dict, code: str) -> None:
    assert body["success"] is False
    assert body["error"]["code"] == code and body["error"]["message"]


# --- health ---------------------------------------------------------------------------


HEALTH_KEYS = {
    "success", "accountId", "status", "connected", "lastRealMessageMs", "timeSinceLastRealMs", "isDegraded",
    "warning", "needsRepair", "repairReason", "restarts", "lastProtocolMessageMs", "connectedSinceMs",
    "keepaliveTimeouts", "undecryptableRecent", "instanceId", "leaseHolder", "leaseEpoch",
}


def test_health_of_a_connected_account_computes_time_since_last_real(control):
    control.snap = snapshot(state(
        "acc1", AccountStatus.CONNECTED, phone="15550001111", last_real_message_ms=NOW_MS - 42_000,
        last_protocol_message_ms=NOW_MS - 1_000, connected_since_ms=NOW_MS - 600_000, restarts=2,
        keepalive_timeouts=1, undecryptable_recent=3, real_messages=10, protocol_messages=50,
        lease_holder=INSTANCE, lease_epoch=4))
    data = get_json(control, health_path("acc1"))
    assert set(data) == HEALTH_KEYS
    assert data == {
        "success": True, "accountId": "acc1", "status": "connected", "connected": True,
        "lastRealMessageMs": NOW_MS - 42_000, "timeSinceLastRealMs": 42_000, "isDegraded": False,
        "warning": None, "needsRepair": False, "repairReason": None, "restarts": 2,
        "lastProtocolMessageMs": NOW_MS - 1_000, "connectedSinceMs": NOW_MS - 600_000,
        "keepaliveTimeouts": 1, "undecryptableRecent": 3, "instanceId": INSTANCE,
        "leaseHolder": INSTANCE, "leaseEpoch": 4,
    }
    assert control.calls == 0  # a running account is answered from the snapshot alone


def test_health_without_any_real_message_has_null_time_since(control):
    control.snap = snapshot(state("acc1", AccountStatus.CONNECTED, last_protocol_message_ms=NOW_MS - 5))
    data = get_json(control, health_path("acc1"))
    assert data["lastRealMessageMs"] is None and data["timeSinceLastRealMs"] is None
    assert data["lastProtocolMessageMs"] == NOW_MS - 5


@pytest.mark.parametrize("status", list(AccountStatus))
def test_health_reports_every_status(control, status):
    control.snap = snapshot(state("acc1", status))
    data = get_json(control, health_path("acc1"))
    assert data["status"] == status.value
    assert data["connected"] is (status in (AccountStatus.CONNECTED, AccountStatus.DEGRADED))


def test_health_of_a_degraded_account_carries_the_warning(control):
    warning = "only protocol traffic for 312s while connected"
    control.snap = snapshot(state("acc1", AccountStatus.DEGRADED, is_degraded=True, warning=warning,
                                  last_real_message_ms=NOW_MS - 900_000, last_protocol_message_ms=NOW_MS - 2_000,
                                  restarts=1))
    data = get_json(control, health_path("acc1"))
    assert data["status"] == "degraded" and data["connected"] is True
    assert data["isDegraded"] is True and data["warning"] == warning
    assert data["timeSinceLastRealMs"] == 900_000 and data["restarts"] == 1


@pytest.mark.parametrize("status,reason", [
    (AccountStatus.NEEDS_REPAIR, "still degraded after restart"),
    (AccountStatus.LOGGED_OUT, "logged out from the phone"),
])
def test_health_of_an_account_that_needs_repair(control, status, reason):
    control.snap = snapshot(state("acc1", status, needs_repair=True, repair_reason=reason,
                                  repair_requested_ms=NOW_MS - 10, restarts=6))
    data = get_json(control, health_path("acc1"))
    assert data["status"] == status.value and data["connected"] is False
    assert data["needsRepair"] is True and data["repairReason"] == reason and data["restarts"] == 6


def test_health_of_an_unknown_account_is_404(control):
    control.add_doc("other")
    assert_error(get_json(control, health_path("nobody"), 404), "unknown_account")
    assert control.calls == 1


@pytest.mark.parametrize("bad", ["bad.id", "a__b", "x" * 65, "%20"])
def test_health_with_an_invalid_id_is_400_and_never_reaches_the_daemon(control, bad):
    assert_error(get_json(control, health_path(bad), 400), "invalid_account_id")
    assert control.calls == 0


def test_health_of_a_known_account_not_running_here(control):
    control.add_doc("elsewhere", "15550002222", status="needs_repair", needsRepair=True,
                    repairReason="logged_out")
    control.add_doc("stopped")
    plant_account(control.store, {"accountId": "bare", "phone": "15550003333"})  # no status field at all
    control.snap = snapshot(state("running", AccountStatus.CONNECTED))

    data = get_json(control, health_path("elsewhere"))
    assert set(data) == HEALTH_KEYS
    assert data["accountId"] == "elsewhere" and data["status"] == "needs_repair"
    assert data["connected"] is False and data["isDegraded"] is False
    assert data["warning"] == "not running on this instance"
    assert data["needsRepair"] is True and data["repairReason"] == "logged_out"
    assert data["lastRealMessageMs"] is None and data["timeSinceLastRealMs"] is None
    assert data["instanceId"] == INSTANCE

    data = get_json(control, health_path("stopped"))
    assert data["status"] == "pairing" and data["needsRepair"] is False and data["repairReason"] is None

    data = get_json(control, health_path("bare"))
    assert data["status"] == "disconnected" and data["warning"] == "not running on this instance"


def test_health_lookup_when_the_store_is_down_is_503(control):
    control.fail = StoreError("deadline exceeded")
    assert_error(get_json(control, health_path("acc1"), 503), "store_unavailable")


# --- auth -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [health_path("acc1"), DASHBOARD])
def test_both_endpoints_need_the_bearer_token(control, path):
    control.snap = snapshot(state("acc1", AccountStatus.CONNECTED))

    async def body(client):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = await client.get(path, headers=headers)
            assert resp.status == 401, await resp.text()
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert_error(await resp.json(), "unauthorized")
        resp = await client.get(path, headers=AUTH)
        assert resp.status == 200
        assert (await resp.json())["success"] is True

    serve(control, body)
    assert control.calls == (1 if path == DASHBOARD else 0)


def test_endpoints_are_open_without_admin_token_on_loopback(control):
    control.snap = snapshot(state("acc1", AccountStatus.CONNECTED))

    async def body(client):
        for path in (health_path("acc1"), DASHBOARD):
            resp = await client.get(path)
            assert resp.status == 200, await resp.text()

    serve(control, body, token=None)


# --- dashboard ------------------------------------------------------------------------


ENTRY_KEYS = {
    "accountId", "phone", "status", "connected", "degraded", "warning", "needsRepair", "repairReason",
    "restarts", "lastRealMessageMs", "lastHistorySyncAt", "lastRealtimeMessageAt", "lastBackfillAt",
    "leaseHolder", "leaseEpoch", "lastBackfillStatus", "backfillRunning", "outbox",
}


def populate(control) -> None:
    """Documents for a1..a4 and a6; live state for a1, a2, a3, a5 (a5 has no document)."""
    control.add_doc("a1", "15550000001", status="disconnected",  # stale: the snapshot wins
                    lastHistorySyncAt=ms_to_dt(NOW_MS - 86_400_000), lastBackfillAt=ms_to_dt(NOW_MS - 7_200_000),
                    lastRealtimeMessageAt=ms_to_dt(NOW_MS - 30_000))
    control.add_doc("a2", "15550000002")
    control.add_doc("a3")
    control.add_doc("a4", "15550000004", status="logged_out", needsRepair=True, repairReason="logged_out")
    control.add_doc("a6", "15550000006", status="connected")  # running on another instance
    control.snap = snapshot(
        state("a3", AccountStatus.PAIRING),
        state("a1", AccountStatus.CONNECTED, phone="15550000001", last_real_message_ms=NOW_MS - 30_000,
              lease_holder="inst-test", lease_epoch=2),
        state("a2", AccountStatus.DEGRADED, is_degraded=True, warning="keepalive timed out 3 times", restarts=1),
        state("a5", AccountStatus.NEEDS_REPAIR, phone="15550000005", needs_repair=True,
              repair_reason="restart intensity exceeded", restarts=6, lease_holder="inst-other"),
    )
    # the lease coordinator's last read: a6 runs on another instance
    control.snap = replace(control.snap, leases=LeaseView("active", 3, {"a1": ("inst-test", 2),
                                                                         "a6": ("inst-other", 7)}))


def test_dashboard_merges_documents_with_the_snapshot(control):
    populate(control)
    data = get_json(control, DASHBOARD)
    assert data["success"] is True and data["instanceId"] == INSTANCE and data["generatedAtMs"] == NOW_MS
    assert "storeError" not in data
    accounts = data["accounts"]
    assert [a["accountId"] for a in accounts] == ["a1", "a2", "a3", "a4", "a5", "a6"]
    assert all(set(a) == ENTRY_KEYS for a in accounts)
    by_id = {a["accountId"]: a for a in accounts}

    assert by_id["a1"] == {
        "accountId": "a1", "phone": "15550000001", "status": "connected", "connected": True, "degraded": False,
        "warning": None, "needsRepair": False, "repairReason": None, "restarts": 0,
        "lastRealMessageMs": NOW_MS - 30_000, "lastHistorySyncAt": iso(ms_to_dt(NOW_MS - 86_400_000)),
        "lastRealtimeMessageAt": iso(ms_to_dt(NOW_MS - 30_000)), "lastBackfillAt": iso(ms_to_dt(NOW_MS - 7_200_000)),
        "leaseHolder": "inst-test", "leaseEpoch": 2, "lastBackfillStatus": None, "backfillRunning": None,
        "outbox": {"queued": 0, "sending": 0, "unknown": 0},
    }
    a2 = by_id["a2"]
    assert a2["status"] == "degraded" and a2["connected"] is True and a2["degraded"] is True
    assert a2["warning"] == "keepalive timed out 3 times" and a2["restarts"] == 1
    assert a2["phone"] == "15550000002"  # from the document: the snapshot has none
    assert a2["leaseHolder"] == INSTANCE  # running here without a recorded holder
    assert by_id["a3"]["status"] == "pairing" and by_id["a3"]["phone"] is None
    assert by_id["a3"]["lastHistorySyncAt"] is None and by_id["a3"]["lastBackfillAt"] is None

    a4 = by_id["a4"]  # document only
    assert a4["status"] == "logged_out" and a4["connected"] is False and a4["degraded"] is False
    assert a4["needsRepair"] is True and a4["repairReason"] == "logged_out"
    assert a4["warning"] == "not running on this instance" and a4["leaseHolder"] is None

    a5 = by_id["a5"]  # snapshot only (no document yet)
    assert a5["status"] == "needs_repair" and a5["needsRepair"] is True
    assert a5["repairReason"] == "restart intensity exceeded" and a5["restarts"] == 6
    assert a5["phone"] == "15550000005" and a5["leaseHolder"] == "inst-other"
    assert a5["lastHistorySyncAt"] is None

    a6 = by_id["a6"]  # the document says connected (another instance runs it): not here
    assert a6["status"] == "connected" and a6["connected"] is False
    assert (a6["leaseHolder"], a6["leaseEpoch"]) == ("inst-other", 7)

    assert data["counts"] == {"pairing": 1, "connecting": 0, "connected": 2, "degraded": 1, "disconnected": 0,
                              "needs_repair": 1, "logged_out": 1}
    assert sum(data["counts"].values()) == len(accounts)


def test_dashboard_counts_every_status_even_when_empty(control):
    data = get_json(control, DASHBOARD)
    assert data["accounts"] == []
    assert data["counts"] == {s.value: 0 for s in AccountStatus}


def test_dashboard_answers_from_the_snapshot_when_the_store_fails(control):
    populate(control)
    control.fail = StoreError("firestore: deadline exceeded")
    data = get_json(control, DASHBOARD)
    assert data["success"] is True and data["storeError"] == "firestore: deadline exceeded"
    by_id = {a["accountId"]: a for a in data["accounts"]}
    assert list(by_id) == ["a1", "a2", "a3", "a5"]  # only what runs here
    assert by_id["a2"]["degraded"] is True and by_id["a2"]["phone"] is None
    assert by_id["a1"]["lastBackfillAt"] is None and by_id["a1"]["lastRealMessageMs"] == NOW_MS - 30_000
    assert data["counts"]["connected"] == 1 and data["counts"]["logged_out"] == 0


def test_dashboard_answers_when_the_store_does_not_answer_in_time(control):
    populate(control)
    control.gate = threading.Event()
    data = get_json(control, DASHBOARD, admin_timeout_s=0.2)
    assert data["success"] is True and "0.2s" in data["storeError"]
    assert [a["accountId"] for a in data["accounts"]] == ["a1", "a2", "a3", "a5"]


def test_dashboard_answers_when_the_sqlite_file_is_broken(control, tmp_path):
    populate(control)
    with sqlite3.connect(tmp_path / "wasync.db") as conn:  # a real failure of the real store
        conn.execute("DROP TABLE accounts")
    data = get_json(control, DASHBOARD)
    assert data["success"] is True and "accounts" in data["storeError"]
    assert [a["accountId"] for a in data["accounts"]] == ["a1", "a2", "a3", "a5"]


# --- the test-only fault route ------------------------------------------------------------


def test_fault_route_does_not_exist_without_the_debug_setting(control):
    async def body(client):
        resp = await client.post("/api/admin/debug/fault/a1", json={"kind": "raise"}, headers=AUTH)
        return resp.status, await resp.json()

    status, answer = serve(control, body)
    assert status == 404 and answer["error"]["code"] == "not_found"


def test_fault_route_with_the_debug_setting_validates_its_body(control):
    injected = []
    control.inject_fault = lambda account_id, kind: injected.append((account_id, kind))
    env = {"INSTANCE_ID": INSTANCE, "ADMIN_TOKEN": TOKEN, "WASYNC_DEBUG_FAULTS": "true"}
    app = create_app(control, config.load(env), Metrics())

    async def main():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            bad = await client.post("/api/admin/debug/fault/a1", json={"kind": "explode"}, headers=AUTH)
            ok = await client.post("/api/admin/debug/fault/a1", json={"kind": "block"}, headers=AUTH)
            return bad.status, ok.status, await ok.json()

    bad, ok, answer = asyncio.run(main())
    assert bad == 400 and ok == 200 and answer["kind"] == "block"
    assert injected == [("a1", "block")]


# --- instances ---------------------------------------------------------------------------


def test_instances_lists_what_the_lease_coordinator_last_saw(control):
    control.snap = replace(snapshot(), leases=LeaseView("active", 2, {}, instances=(
        InstanceView(INSTANCE, live=True, held=2, unchanged_for_ms=400, started_at="2026-11-30T09:00:00.000Z",
                     version="0.1.0"),
        InstanceView("inst-gone", live=False, held=5, unchanged_for_ms=48_000))))
    data = get_json(control, "/api/status/instances")
    assert data["mode"] == "active" and data["leasesHeld"] == 2 and data["instanceId"] == INSTANCE
    assert data["instances"] == [
        {"instanceId": INSTANCE, "self": True, "live": True, "heartbeatAgeMs": 400, "accountsHeld": 2,
         "startedAt": "2026-11-30T09:00:00.000Z", "version": "0.1.0"},
        {"instanceId": "inst-gone", "self": False, "live": False, "heartbeatAgeMs": 48_000, "accountsHeld": 5,
         "startedAt": None, "version": None}]
    assert control.calls == 0  # from the snapshot: never the store


def test_instances_needs_the_admin_token(control):
    async def body(client):
        resp = await client.get("/api/status/instances")
        assert resp.status == 401

    serve(control, body)
