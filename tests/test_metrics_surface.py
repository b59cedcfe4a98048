"""What /metrics offers an operator of many accounts: per-account state, the process, the
build, HTTP by route, webhook deliveries; labelled counters there from the first scrape;
no `_created` twins."""
from __future__ import annotations

import time

from test_http_app import AUTH, control, serve, snapshot  # noqa: F401  (control is a fixture)
from wasync.runtime.account import AccountState
from wasync.runtime.alerts import Alerts
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.model import AccountStatus

S = AccountStatus


def samples(metrics: Metrics) -> dict[tuple, float]:
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_process_build_and_initialised_counters_from_the_first_scrape():
    text = Metrics().render().decode()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 'wasync_build_info{neonize="', 'wasync_account_restarts_total{reason="hung"} 0.0',
                 'wasync_outbox_results_total{result="unknown"} 0.0', 'wasync_actor_failures_total{actor="outbox"} 0.0',
                 'wasync_lease_lost_total{reason="taken"} 0.0', "wasync_start_queue_depth 0.0"):
        assert name in text, name
    assert "_created" not in text


def test_per_account_series_follow_the_snapshot():
    metrics = Metrics()
    now = int(time.time() * 1000)
    metrics.update_from_snapshot(snapshot(accounts=[
        AccountState("a1", S.CONNECTED, running=True, connected=True, last_real_message_ms=now, restarts=2),
        AccountState("a2", S.CONNECTING)]))
    got = samples(metrics)
    assert got[("wasync_account_status", (("account", "a1"), ("status", "connected")))] == 1
    assert got[("wasync_account_status", (("account", "a2"), ("status", "connecting")))] == 1
    assert got[("wasync_account_last_real_message_timestamp_seconds", (("account", "a1"),))] == now / 1000
    assert got[("wasync_account_recent_restarts", (("account", "a1"),))] == 2
    assert got[("wasync_start_queue_depth", ())] == 1  # a2 waits for a start
    # a1 degrades, a2 leaves: no stale series.
    metrics.update_from_snapshot(snapshot(accounts=[AccountState("a1", S.DEGRADED, running=True)]))
    got = samples(metrics)
    status = {k for k in got if k[0] == "wasync_account_status"}
    assert status == {("wasync_account_status", (("account", "a1"), ("status", "degraded")))}
    assert not [k for k in got if dict(k[1]).get("account") == "a2"]


def test_http_requests_are_counted_by_route_template(control):  # noqa: F811
    metrics = Metrics()

    async def body(client):
        for account in ("x1", "x2", "x3"):
            await client.get(f"/api/whatsapp/accounts/{account}/qr", headers=AUTH)
        await client.get("/nowhere", headers=AUTH)
        await client.get("/health")

    serve(control, body, metrics=metrics)
    got = samples(metrics)
    routes = {dict(k[1])["route"] for k in got if k[0] == "wasync_http_requests_total"}
    assert "/api/whatsapp/accounts/{accountId}/qr" in routes and "unmatched" in routes and "/health" in routes
    assert not any("x1" in r for r in routes)
    assert got[("wasync_http_request_seconds_count", (("route", "/health"),))] == 1


def test_webhook_deliveries_are_exported():
    metrics = Metrics()
    alerts = Alerts("inst", None, clock=Clock())
    metrics.watch_alerts(alerts)
    got = samples(metrics)
    assert got[("wasync_alert_webhook_deliveries_total", (("result", "delivered"),))] == 0
    assert got[("wasync_alert_webhook_deliveries_total", (("result", "given_up"),))] == 0
