"""HTTP: the backfill routes (SPEC §4) over real loopback against a real SQLite store:
the 202 answer, the 409s (a run going on here or elsewhere, an account run elsewhere),
bad input refused before it reaches the daemon, and the status document."""
from __future__ import annotations

import pytest

from store_fixtures import msg
from test_http_app import TOKEN, StoreControl, error_of, serve, snapshot
from wasync.actors.scheduler_protocol import BackfillRunning
from wasync.runtime.control import RunsElsewhere, UnknownAccount
from wasync.runtime.model import ThreadUpdate
from wasync.runtime.store.sqlite import SqliteStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = "15552223333@s.whatsapp.net"


class BackfillControl(StoreControl):
    """StoreControl plus the backfill calls; `start_error` is what starting raises."""

    start_error = None

    def start_backfill(self, account_id: str) -> str:
        self._enter("start_backfill", account_id)
        if self.store.get_account(account_id) is None:
            raise UnknownAccount(account_id)
        if self.start_error is not None:
            raise self.start_error
        return "backfill-inst-test-1"

    def backfill_status(self, account_id: str, threads: int):
        self._enter("backfill_status", account_id, threads)
        doc = self.store.get_account(account_id)
        if doc is None:
            raise UnknownAccount(account_id)
        return doc, self.store.list_thread_histories(account_id, threads)


@pytest.fixture
def control(tmp_path):
    store = SqliteStore(tmp_path / "wasync.db")
    store.create_account("acc1", "15550001111", 1_000)
    yield BackfillControl(store, snapshot())
    store.close()


def test_start_answers_202_in_the_spec_shape(control):
    async def body(client):
        for path in ("/api/whatsapp/backfill/acc1", "/api/admin/backfill/acc1"):
            resp = await client.post(path, headers=AUTH)
            assert resp.status == 202
            assert await resp.json() == {"success": True, "message": "Backfill started (runs asynchronously)",
                                         "accountId": "acc1", "runId": "backfill-inst-test-1"}
    serve(control, body)


@pytest.mark.parametrize("error, status, code", [
    (BackfillRunning("acc1", "inst-b"), 409, "backfill_running"),
    (RunsElsewhere("acc1", "inst-b"), 409, "runs_elsewhere"),
])
def test_start_conflicts_name_the_holder(control, error, status, code):
    control.start_error = error

    async def body(client):
        resp = await client.post("/api/whatsapp/backfill/acc1", headers=AUTH)
        found = await error_of(resp, status, code)
        assert "inst-b" in found["error"]["message"]
    serve(control, body)


def test_bad_input_never_reaches_the_daemon(control):
    async def body(client):
        await error_of(await client.post("/api/whatsapp/backfill/nosuch", headers=AUTH), 404, "unknown_account")
        await error_of(await client.post("/api/whatsapp/backfill/acc1", headers=AUTH, json={"threads": 5}),
                       400, "unknown_field")
        await error_of(await client.post("/api/whatsapp/backfill/..%2F", headers=AUTH), 400, "invalid_account_id")
        for bad in ("0", "1001", "x", "-1"):
            await error_of(await client.get(f"/api/admin/backfill/acc1/status?threads={bad}", headers=AUTH),
                           400, "invalid_threads")
        await error_of(await client.post("/api/whatsapp/backfill/acc1"), 401, "unauthorized")
    serve(control, body)
    assert [c for c in control.calls if c[0] == "start_backfill"] == [("start_backfill", "nosuch")]
    assert not [c for c in control.calls if c[0] == "backfill_status"]


def test_status_reports_threads_and_completeness(control):
    store = control.store
    store.upsert_messages([msg(account="acc1", chat=CHAT, id="m1", ts=1_000_000),
                           msg(account="acc1", chat=CHAT, id="m2", ts=2_000_000)], 3_000_000)
    store.update_threads([ThreadUpdate("acc1", CHAT, history_complete=True, last_backfill_at_ms=2_500_000,
                                       last_backfill_result="complete")], 3_000_000)
    store.flush()

    async def body(client):
        resp = await client.get("/api/admin/backfill/acc1/status", headers=AUTH)
        assert resp.status == 200
        got = await resp.json()
        assert got["completeness"] == {"threads": 1, "complete": 1, "incomplete": 0, "unreachable": 0,
                                       "messagesStored": 2}
        assert got["onDemand"] == "unknown" and got["running"] is None  # not running on this instance
        [thread] = got["threads"]
        assert thread["oldest"] == {"id": "m1", "tsMs": 1_000_000, "fromMe": False}
        assert thread["newest"]["id"] == "m2" and thread["lastBackfillResult"] == "complete"
        await error_of(await client.get("/api/admin/backfill/nosuch/status", headers=AUTH), 404, "unknown_account")
    serve(control, body)
