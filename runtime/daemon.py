"""The only place that picks concrete adapters and wires the daemon together.

`wasync run`: settings → store (SQLite by default, Firestore with WASYNC_STORE) → spool →
writer → supervisor (one AccountActor per account, each with a session from the chosen
transport) → the aiohttp app. SIGTERM/SIGINT drain: stop sessions (no new events), let
the actors and the writer empty the spool (at most 30 s), close the store, exit 0.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
from pathlib import Path
from typing import Optional

import pykka

from wasync.actors.startgate import StartGate
from wasync.runtime.alerts import Alerts
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.config import Settings
from wasync.runtime.control import AccountExists, Snapshot, UnknownAccount
from wasync.runtime.metrics import Metrics
from wasync.runtime.spool import Spool
from wasync.runtime.transport.session import NotConnected
from wasync.runtime.accounts import account_fields

log = logging.getLogger("wasync.daemon")

VERSION = "0.1.0"
TICK_S = 2.0
DRAIN_S = 30.0


def make_store(settings: Settings):
    if settings.store == "firestore":
        from wasync.runtime.store.firestore import FirestoreStore

        return FirestoreStore.from_settings(settings)
    from wasync.runtime.store.sqlite import SqliteStore

    return SqliteStore.from_settings(settings)


def make_sessions(settings: Settings, gate=None):
    if settings.sim_address:
        from wasync.runtime.transport.simulated import SimulatedTransport

        return SimulatedTransport.from_settings(settings, gate=gate)
    # neonize reconnects inside whatsmeow (its own backoff): only our starts are gated.
    from wasync.runtime.transport.neonize import NeonizeTransport

    return NeonizeTransport.from_settings(settings)


class Daemon:
    def __init__(self, settings: Settings, clock: Optional[Clock] = None):
        self.settings = settings
        self.clock = clock or Clock()
        self.metrics = Metrics()
        self.board = Board(settings.instance_id, settings.store, self.clock)
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self._accounts_lock = threading.Lock()
        self._accounts_read: Optional[list[dict]] = None  # latest account list not yet handed over

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> "Daemon":
        from wasync.actors.account import AccountActor
        from wasync.actors.supervisor import SupervisionPolicy, SupervisorActor
        from wasync.actors.writer import IngestBatch, StoreWriterActor

        s = self.settings
        Path(s.data_dir).mkdir(parents=True, exist_ok=True)
        self.store = make_store(s)
        self.spool = Spool(Path(s.data_dir) / "spool.db", self.clock)
        self.gate = StartGate(s.max_starts_per_second, self.clock)
        self.sessions = make_sessions(s, self.gate)
        self.alerts = Alerts(s.instance_id, s.repair_alert_webhook_url, clock=self.clock)
        self.writer = StoreWriterActor.start(self.store, self.spool, self.board, self.metrics, self.clock)
        deps = dict(sessions=self.sessions, spool=self.spool, writer=self.writer, board=self.board,
                    metrics=self.metrics, clock=self.clock, dry_run_history=s.history_sync_dry_run,
                    degraded_after_ms=s.degraded_after_ms)

        def make_child(account_id, phone, supervisor, slot, fresh_pairing=False):
            return AccountActor.start(account_id, phone, supervisor=supervisor, slot=slot,
                                      fresh_pairing=fresh_pairing, **deps)

        def write_fields(account_id: str, fields: dict) -> None:
            self.writer.tell(IngestBatch(account_id, account_fields=dict(fields)))

        policy = SupervisionPolicy(hung_after_ms=s.hung_after_ms, degraded_after_ms=s.degraded_after_ms)
        self.supervisor = SupervisorActor.start(make_child, self._wanted_accounts, self.board, self.metrics,
                                                self.gate, clock=self.clock, alerts=self.alerts,
                                                write_fields=write_fields, policy=policy)
        left = self.spool.depth()
        if left:
            log.info("[realtime] spool holds %d events from an earlier run: replaying them first", left)
        self.supervisor.tell("reconcile")
        self._ticker = threading.Thread(target=self._tick_loop, name="daemon-ticker", daemon=True)
        self._ticker.start()
        threading.Thread(target=self._accounts_loop, name="daemon-accounts", daemon=True).start()
        self.board.set_ready(True)
        log.info("[supervisor] wasync %s started instanceId=%s store=%s transport=%s",
                 VERSION, s.instance_id, self.store.name, s.transport)
        return self

    def stop(self, drain_s: float = DRAIN_S) -> bool:
        """Drain and close; True if the spool was emptied within `drain_s`."""
        self.board.set_ready(False)
        self._stop.set()
        try:
            self.supervisor.ask("stop_sessions", timeout=30)
        except pykka.Timeout:
            # Stuck (e.g. stopping a child whose session hangs): go on draining anyway.
            log.error("[supervisor] did not stop the sessions within 30 s; draining anyway")
        self._sessions_stopped(timeout_s=30)
        deadline = self.clock.monotonic_s() + drain_s
        drained = False
        while self.clock.monotonic_s() < deadline:
            flushed = self.writer.ask("drain", timeout=30)
            if flushed and self.spool.depth() == 0:
                drained = True
                break
            self._stop.wait(0.1)
        left = self.spool.depth()
        log.info("[supervisor] shutting down: spool %s (%d events left for the next start)",
                 "empty" if drained else "not empty", left)
        for actor, timeout in ((self.supervisor, 60), (self.writer, 30)):
            try:
                actor.stop(timeout=timeout)
            except pykka.Timeout:
                log.error("[supervisor] %s did not stop within %d s", actor.actor_class.__name__, timeout)
        for closer in (self.alerts.close, getattr(self.sessions, "close", None), self.store.close,
                       self.spool.close):
            if closer:
                try:
                    closer()
                except Exception:
                    log.exception("[supervisor] error while closing")
        return drained

    def _sessions_stopped(self, timeout_s: float) -> None:
        """Wait until every account actor has stopped its session. The supervisor only
        *tells* them to; a session spools its last events (its `Disconnected`) as it
        stops, so draining before that would leave them behind. An ask to each actor is
        queued behind that message and answered once it has been handled."""
        from wasync.actors.account import AccountActor

        futures = []
        for ref in pykka.ActorRegistry.get_by_class(AccountActor):
            try:
                futures.append(ref.ask("session", block=False))
            except pykka.ActorDeadError:
                pass
        deadline = self.clock.monotonic_s() + timeout_s
        for future in futures:
            try:
                future.get(timeout=max(0.0, deadline - self.clock.monotonic_s()))
            except pykka.Timeout:
                log.warning("[supervisor] an account did not stop its session within %.0f s", timeout_s)
                break
            except pykka.ActorDeadError:
                pass

    def _tick_loop(self) -> None:
        from wasync.actors.supervisor import Tick

        while not self._stop.wait(TICK_S):
            # The supervisor's tick never waits for the store: the account list comes
            # from its own reader thread (a frozen store blocks that one, not liveness).
            with self._accounts_lock:
                accounts, self._accounts_read = self._accounts_read, None
            try:
                self.supervisor.tell(Tick(accounts))
                self.board.set_spool(self.spool.depth(), self.spool.oldest_received_ms())
                # Pinged on every tick, not only once a write failed: a store that stops
                # answering (network partition, frozen server) stalls the writer inside
                # a call for its whole deadline (20 s for Firestore), and /diag must say
                # so while it lasts. A ping is bounded (2 s).
                if self.store.ping():
                    if not self.board.snapshot().store.connected:
                        self.board.store_ok()
                else:
                    self.board.store_failed("ping failed")
            except Exception:
                log.exception("[supervisor] tick failed")

    def _accounts_loop(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                accounts = self._wanted_accounts()
            except Exception as exc:
                log.warning("[supervisor] could not read the account list: %s", exc)
                continue
            with self._accounts_lock:
                self._accounts_read = accounts

    def _wanted_accounts(self) -> list[dict]:
        try:
            accounts = self.store.list_accounts()
        except Exception as exc:
            self.board.store_failed(f"{type(exc).__name__}: {exc}")
            raise
        return [a for a in accounts if not a.get("deleted")]

    # --- DaemonControl -------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self.board.snapshot()

    def list_accounts(self) -> list[dict]:
        live = {a.account_id: a for a in self.board.snapshot().accounts}
        out = []
        for doc in self.store.list_accounts():
            state = live.get(doc["accountId"])
            if state is not None:
                doc = {**doc, "status": state.status.value, "connected": state.connected}
            out.append(doc)
        return out

    def add_account(self, account_id: str, phone: Optional[str]) -> dict:
        if self.store.get_account(account_id) is not None:
            raise AccountExists(account_id)
        self.store.merge_account(account_id, account_fields(account_id, phone), self.clock.wall_ms())
        self.supervisor.tell("reconcile")
        log.info("[supervisor] accountId=%s added phone=%s", account_id, phone or "-")
        return self.store.get_account(account_id)

    def remove_account(self, account_id: str) -> None:
        if not self.store.delete_account(account_id):
            raise UnknownAccount(account_id)
        self.supervisor.tell("reconcile")
        log.info("[supervisor] accountId=%s removed", account_id)

    def _known(self, account_id: str) -> None:
        if self.board.account(account_id) is None and self.store.get_account(account_id) is None:
            raise UnknownAccount(account_id)

    def current_qr(self, account_id: str) -> Optional[str]:
        code = self.board.qr(account_id)
        if code is None and self.board.account(account_id) is None:
            self._known(account_id)
        return code

    def pair_phone(self, account_id: str, phone: str) -> str:
        from wasync.actors.messages import PairPhone

        child = self.supervisor.ask(("child", account_id), timeout=10)
        if child is None:
            self._known(account_id)
            raise NotConnected(f"account {account_id} is not running on this instance")
        return child.ask(PairPhone(phone), timeout=30)

    def inject_fault(self, account_id: str, kind: str) -> None:
        """Test-only (WASYNC_DEBUG_FAULTS): make the account's actor raise in a handler
        ("raise") or block in one forever ("block"), to exercise supervision for real."""
        from wasync.actors.messages import Fault

        child = self.supervisor.ask(("child", account_id), timeout=10)
        if child is None:
            self._known(account_id)
            raise NotConnected(f"account {account_id} is not running on this instance")
        child.tell(Fault(kind))
        log.warning("[supervisor] accountId=%s fault injected: %s", account_id, kind)

    def regenerate_qr(self, account_id: str) -> None:
        self._known(account_id)
        self.board.publish_qr(account_id, None)
        self.supervisor.tell(("restart", account_id))
        log.info("[supervisor] accountId=%s pairing restarted (regenerate-qr)", account_id)


async def serve(daemon: Daemon, settings: Settings) -> int:
    from aiohttp import web

    from wasync.http.app import create_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(daemon, settings, daemon.metrics), handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        await runner.cleanup()
        await loop.run_in_executor(None, daemon.stop)
        return 1
    log.info("[supervisor] listening on http://%s:%d", settings.host, settings.port)
    await stop.wait()
    log.info("[supervisor] signal received: draining")
    await loop.run_in_executor(None, daemon.stop)
    await runner.cleanup()
    return 0
