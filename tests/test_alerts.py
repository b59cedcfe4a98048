"""Re-pair alerts against a real aiohttp webhook receiver on a loopback port (no HTTP mocks)."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
from aiohttp import web

from wasync.runtime.alerts import Alerts
from wasync.runtime.backoff import Backoff
from wasync.runtime.clock import FakeClock

SINCE_MS = 1_763_900_000_123
SINCE_ISO = "2025-11-23T12:13:20.123Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """Webhook receiver in its own thread/loop. `statuses` are answered in order (then 200)."""

    def __init__(self, port: int, statuses=(), hang_s: float = 0.0):
        self.port, self.statuses, self.hang_s = port, list(statuses), hang_s
        self.requests: list[dict] = []  # every request seen, whatever we answered
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append({"content_type": request.content_type, "body": await request.json()})
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> "Receiver":
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def make(port=None, **kw) -> Receiver:
        r = Receiver(port or free_port(), **kw).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def alerts_factory():
    made: list[Alerts] = []

    def make(url, **kw) -> Alerts:
        kw.setdefault("retry", Backoff(initial_ms=50, max_ms=200))
        kw.setdefault("http_timeout_s", 2)
        a = Alerts("inst-1", url, clock=FakeClock(), **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close(1)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_one_incident_one_post_with_body(receivers, alerts_factory, caplog):
    caplog.set_level(logging.INFO, logger="wasync.alerts")
    rx = receivers()
    alerts = alerts_factory(rx.url)
    assert alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS) is True
    wait_for(lambda: alerts.stats()["delivered"] == 1)
    assert rx.requests == [{"content_type": "application/json", "body": {
        "accountId": "acc-1", "reason": "logged_out", "since": SINCE_ISO,
        "instanceId": "inst-1", "status": "needs_repair"}}]
    lines = [r.getMessage() for r in caplog.records if r.name == "wasync.alerts" and "[supervisor]" in r.getMessage()]
    assert lines == ["[supervisor] accountId=acc-1 needs re-pair: reason=logged_out status=needs_repair"]


def test_duplicate_raise_is_ignored_and_clear_rearms(receivers, alerts_factory):
    rx = receivers()
    alerts = alerts_factory(rx.url)
    assert alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS)
    assert alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS + 5) is False
    wait_for(lambda: alerts.stats()["delivered"] == 1)
    time.sleep(0.2)  # give a (wrong) second POST time to show up
    assert len(rx.requests) == 1
    assert set(alerts.open_incidents()) == {"acc-1"}

    alerts.clear("acc-1")
    assert alerts.open_incidents() == {}
    assert alerts.raise_alert("acc-1", "bad_session", "needs_repair", SINCE_MS + 1000) is True
    wait_for(lambda: alerts.stats()["delivered"] == 2)
    assert [b["reason"] for b in rx.bodies()] == ["logged_out", "bad_session"]
    assert rx.bodies()[1]["since"] == "2025-11-23T12:13:21.123Z"


def test_silent_incident_from_an_earlier_run_is_not_posted_again(receivers, alerts_factory):
    rx = receivers()
    alerts = alerts_factory(rx.url)
    assert alerts.raise_alert("acc-1", "logged out", "logged_out", SINCE_MS, notify=False) is True
    assert alerts.raise_alert("acc-1", "logged out", "logged_out", SINCE_MS) is False  # already open
    time.sleep(0.2)
    assert rx.requests == [] and set(alerts.open_incidents()) == {"acc-1"}
    alerts.clear("acc-1")
    assert alerts.raise_alert("acc-1", "still broken", "needs_repair", SINCE_MS) is True
    wait_for(lambda: alerts.stats()["delivered"] == 1)
    assert [b["reason"] for b in rx.bodies()] == ["still broken"]


def test_5xx_is_retried_until_delivered(receivers, alerts_factory):
    rx = receivers(statuses=[500, 500])
    alerts = alerts_factory(rx.url)
    alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS)
    wait_for(lambda: alerts.stats()["delivered"] == 1)
    assert alerts.stats() == {"delivered": 1, "failed_attempts": 2, "given_up": 0}
    assert len(rx.requests) == 3 and all(b == rx.bodies()[0] for b in rx.bodies())


def test_429_is_retried_but_400_gives_up(receivers, alerts_factory, caplog):
    caplog.set_level(logging.INFO, logger="wasync.alerts")
    rx = receivers(statuses=[429, 400])
    alerts = alerts_factory(rx.url)
    alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS)
    wait_for(lambda: alerts.stats()["given_up"] == 1)
    time.sleep(0.3)  # no further attempts after giving up
    assert len(rx.requests) == 2
    assert alerts.stats() == {"delivered": 0, "failed_attempts": 1, "given_up": 1}
    assert any("refused by webhook (HTTP 400)" in r.getMessage() for r in caplog.records)


def test_receiver_down_then_up(receivers, alerts_factory):
    port = free_port()  # nothing listens yet: connection refused
    alerts = alerts_factory(f"http://127.0.0.1:{port}/hook")
    alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS)
    wait_for(lambda: alerts.stats()["failed_attempts"] >= 2)
    assert alerts.stats()["delivered"] == 0
    rx = receivers(port=port)
    wait_for(lambda: alerts.stats()["delivered"] == 1)
    assert len(rx.requests) == 1 and rx.bodies()[0]["accountId"] == "acc-1"


def test_max_attempts_gives_up(alerts_factory):
    alerts = alerts_factory(f"http://127.0.0.1:{free_port()}/hook", max_attempts=3)
    alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS)
    wait_for(lambda: alerts.stats()["given_up"] == 1)
    assert alerts.stats() == {"delivered": 0, "failed_attempts": 3, "given_up": 1}


def test_hanging_receiver_does_not_block_caller(receivers, alerts_factory, caplog):
    caplog.set_level(logging.INFO, logger="wasync.alerts")
    rx = receivers(hang_s=5)
    alerts = alerts_factory(rx.url, http_timeout_s=10)
    alerts.raise_alert("acc-0", "logged_out", "needs_repair", SINCE_MS)
    wait_for(lambda: len(rx.requests) == 1)  # the sender is now stuck inside the POST
    started = time.perf_counter()
    for i in range(1, 20):
        assert alerts.raise_alert(f"acc-{i}", "logged_out", "needs_repair", SINCE_MS)
    assert time.perf_counter() - started < 0.05
    # close() must not wait for the hung POST beyond its own timeout; the queued alerts are
    # reported as undelivered rather than silently lost.
    started = time.perf_counter()
    alerts.close(0.2)
    assert time.perf_counter() - started < 1.0
    undelivered = [r for r in caplog.records if "undelivered at shutdown" in r.getMessage()]
    assert len(undelivered) == 19


def test_no_webhook_logs_only(alerts_factory, caplog):
    caplog.set_level(logging.INFO, logger="wasync.alerts")
    before = {t.name for t in threading.enumerate()}
    alerts = alerts_factory(None)
    assert alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS) is True
    assert alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS) is False
    assert "wasync-alerts" not in {t.name for t in threading.enumerate()} - before
    # Only this account's lines: an earlier test's sender may still be saying goodbye.
    assert [r.getMessage() for r in caplog.records if r.name == "wasync.alerts" and "acc-1" in r.getMessage()] == [
        "[supervisor] accountId=acc-1 needs re-pair: reason=logged_out status=needs_repair"]
    assert alerts.stats() == {"delivered": 0, "failed_attempts": 0, "given_up": 0}
    alerts.close(1)


def test_close_ends_thread_and_interrupts_backoff(alerts_factory, caplog):
    caplog.set_level(logging.INFO, logger="wasync.alerts")
    # Long backoff against a closed port: close() must not wait it out.
    alerts = alerts_factory(f"http://127.0.0.1:{free_port()}/hook", retry=Backoff(initial_ms=30_000, max_ms=60_000))
    alerts.raise_alert("acc-1", "logged_out", "needs_repair", SINCE_MS)
    wait_for(lambda: alerts.stats()["failed_attempts"] == 1)
    thread = alerts._thread
    assert thread is not None and thread.is_alive()
    started = time.perf_counter()
    alerts.close(2)
    assert time.perf_counter() - started < 1.0
    assert not thread.is_alive()
    assert any("undelivered at shutdown" in r.getMessage() and "acc-1" in r.getMessage()
               for r in caplog.records)
