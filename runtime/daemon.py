"""The only place that picks concrete adapters and wires the daemon together.

`build_system(settings, clock, ticker)` makes every part; `System.start()` starts the
actors in order (writer, supervisor, sweeper, store monitor, lease coordinator: the
last one tells the supervisor what to run); `System.stop()` drains: take no more
leases, stop every session (no new events), let the actors and the sweeper hand every
spool row to the writer, flush (at most `drain_s`), release every lease so other
instances take the accounts over at once, stop the actors, close the adapters. Tests build the same system with
a FakeClock and a FakeTicker, and with their own store or transport.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pykka

from wasync.actors.account import AccountActor, AccountDeps
from wasync.actors.ingest import Ingest
from wasync.actors.monitor import StoreMonitorActor
from wasync.actors.outbox import OutboxActor, OutboxDeps
from wasync.actors.leases import LeaseCoordinatorActor
from wasync.actors.leases_protocol import Draining, ReleaseAll
from wasync.actors.reply import new_reply
from wasync.actors.scheduler import SchedulerActor, SchedulerConfig
from wasync.actors.startgate import StartGate
from wasync.actors.supervisor import SupervisorActor
from wasync.actors.supervisor_protocol import OpenSessions, StopSessions
from wasync.actors.sweeper import SweeperActor, SweepNow
from wasync.actors.watch import SupervisionPolicy
from wasync.actors.writer import StoreWriterActor, new_backlog
from wasync.actors.writer_lanes import Backlog
from wasync.actors.writer_protocol import Drain
from wasync.runtime.alerts import Alerts
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.config import Settings
from wasync.runtime.control import SystemControl
from wasync.runtime.metrics import Metrics
from wasync.runtime.sdnotify import Notifier
from wasync.runtime.spool import Spool, spool_path
from wasync.runtime.ticker import Ticker, Timers
from wasync.runtime.watchdog import SystemdWatchdog

log = logging.getLogger("wasync.daemon")

VERSION = "0.1.0"
DRAIN_S = 30.0
SESSION_CALL_THREADS = 8  # pairing by code and other long session calls, off the actors' threads
# How long a thread keeps the interpreter lock while others wait for it (Python's default
# is 5 ms). During a history sync the account turning history into messages and the writer
# hold it most of the time, and a live message crosses several threads (transport, account,
# writer), waiting at each. bench/pipeline.py --only hol, spool -> store p99 of live
# messages during the burst: 222-695 ms (median 384, 5 runs) at 5 ms, 150-455 ms (median
# 189, 6 runs) at 2 ms; 1 ms (125-191, 2 runs) was not clearly better and cost ~4 % of ingest.
GIL_SWITCH_INTERVAL_S = 0.002


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


@dataclass
class System:
    """Every part of a running daemon. Actor refs are set by `start()`."""

    settings: Settings
    clock: Clock
    ticker: Timers
    metrics: Metrics
    board: Board
    store: object
    spool: Spool
    gate: StartGate
    sessions: object
    alerts: Alerts
    calls: ThreadPoolExecutor
    policy: SupervisionPolicy
    writer: Optional[pykka.ActorRef] = None
    supervisor: Optional[pykka.ActorRef] = None
    sweeper: Optional[pykka.ActorRef] = None
    monitor: Optional[pykka.ActorRef] = None
    leases: Optional[pykka.ActorRef] = None
    scheduler: Optional[pykka.ActorRef] = None
    control: Optional[SystemControl] = None
    # The writer's lanes' sizes, read by the actors that feed it (they pause while one is full).
    backlog: Backlog = field(default_factory=new_backlog)
    # The process's interpreter-lock switch interval before `start`, given back by `stop`.
    switch_interval_before_s: Optional[float] = None

    def start(self) -> "System":
        s = self.settings
        self.switch_interval_before_s = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.spool.adopt_orphans(include_legacy=True)  # spools of processes that died on this host: ours to replay
        self.ticker.start()
        self.writer = StoreWriterActor.start(self.store, self.spool, self.board, self.metrics, self.clock,
                                             self.ticker, on_rejected=lambda rejected: self.supervisor.tell(rejected),
                                             backlog=self.backlog)
        ingest = Ingest(self.spool, self.metrics, self.clock, s.history_sync_dry_run, self.backlog)
        self.scheduler = SchedulerActor.start(self.store, self.board, self.metrics, self.ticker, self.clock,
                                              self.calls, SchedulerConfig.from_settings(s),
                                              to_supervisor=lambda message: self.supervisor.tell(message))
        outbox = OutboxDeps(self.store, self.clock, self.ticker, self.metrics, poll_ms=s.outbox_poll_ms,
                            expire_ms=s.outbox_expire_ms)
        deps = AccountDeps(self.sessions, ingest, self.writer, self.board, self.clock, self.calls,
                           s.degraded_after_ms, store=self.store, ticker=self.ticker, scheduler=self.scheduler,
                           outbox=outbox)

        def make_child(account_id, phone, generation, supervisor, slot, fresh_pairing, fence):
            return AccountActor.start(account_id, phone, generation, deps=deps, supervisor=supervisor, slot=slot,
                                      fresh_pairing=fresh_pairing, fence=fence)

        self.supervisor = SupervisorActor.start(make_child, writer=self.writer, board=self.board,
                                                metrics=self.metrics, gate=self.gate, ticker=self.ticker,
                                                clock=self.clock, alerts=self.alerts, policy=self.policy,
                                                to_leases=lambda message: self.leases.tell(message),
                                                to_scheduler=lambda message: self.scheduler.tell(message))
        self.sweeper = SweeperActor.start(ingest, self.writer, self.board, self.ticker)
        self.monitor = StoreMonitorActor.start(self.store, self.spool, self.board, self.writer, self.ticker,
                                               to_leases=lambda message: self.leases.tell(message))
        left = self.spool.depth()
        if left:
            log.info("[realtime] spool holds %d events from an earlier run: replaying them first", left)
        self.leases = LeaseCoordinatorActor.start(self.store, self.supervisor, self.board, self.metrics, self.ticker,
                                                  self.clock, instance_id=s.instance_id, lease_ms=s.lease_ms,
                                                  version=VERSION)
        self.control = SystemControl(self.store, self.board, self.clock, self.supervisor, self.leases,
                                     self.scheduler)
        self.board.set_ready(True)
        log.info("[supervisor] wasync %s started instanceId=%s store=%s transport=%s",
                 VERSION, s.instance_id, self.store.name, s.transport)
        return self

    def stop(self, drain_s: float = DRAIN_S) -> bool:
        """Drain and close; True if the spool was emptied within `drain_s`."""
        self.board.set_ready(False)
        self.leases.tell(Draining())  # nothing new to run; leases held are still renewed
        stopped = new_reply()
        self.supervisor.tell(StopSessions(stopped))
        try:
            stopped.get(timeout=drain_s)
        except pykka.Timeout:
            log.error("[supervisor] not every session stopped within %.0f s; draining anyway", drain_s)
        drained = self._drain(drain_s)
        _stop(self.scheduler, 10)  # stores how its runs ended and frees their job locks while the leases hold
        left = self.spool.depth()
        log.info("[supervisor] shutting down: spool %s (%d events left for the next start)",
                 "empty" if drained else "not empty", left)
        try:
            still_open = self.supervisor.ask(OpenSessions(), timeout=5)
        except pykka.Timeout:
            still_open = None
        if still_open:
            log.error("[lease] %d sessions did not stop (%s): their leases are kept until they expire, so no "
                      "other instance connects beside them", len(still_open), ", ".join(sorted(still_open)[:10]))
        released = new_reply()  # the sockets are stopped: others may take the accounts now
        self.leases.tell(ReleaseAll(released, keep=frozenset(still_open or ()), keep_all=still_open is None))
        try:
            released.get(timeout=10)
        except pykka.Timeout:
            log.error("[lease] the leases could not be released in 10 s: others take over after a lease")
        for actor in (self.leases, self.monitor, self.sweeper, self.supervisor):
            _stop(actor, 10)
        _stop_together(pykka.ActorRegistry.get_by_class(AccountActor), 10)
        # Account actors stop their outbox actors without waiting: wait here, before the store
        # closes under a claim in progress (closing an SQLite connection in use can crash).
        _stop_together(pykka.ActorRegistry.get_by_class(OutboxActor), 10)
        _stop(self.writer, 30)
        self.ticker.stop()
        self.calls.shutdown(wait=False, cancel_futures=True)
        for closer in (self.alerts.close, getattr(self.sessions, "close", None), self.store.close, self.spool.close):
            if closer:
                try:
                    closer()
                except Exception:
                    log.exception("[supervisor] error while closing")
        if self.switch_interval_before_s is not None:
            sys.setswitchinterval(self.switch_interval_before_s)
        return drained

    def _drain(self, drain_s: float) -> bool:
        """Hand every row to the writer and flush, until the spool is empty or time is up.
        Rows of accounts no actor reads (removed, held) are swept at once."""
        deadline = time.monotonic() + drain_s  # real waiting, whatever clock the system runs on
        while True:
            try:
                self.sweeper.ask(SweepNow(), timeout=10)
                if self.writer.ask(Drain(), timeout=30) and self.spool.depth() == 0:
                    return True
            except pykka.Timeout:
                log.warning("[supervisor] the drain is slow: the writer or the sweeper did not answer in time")
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _stop(ref: pykka.ActorRef, timeout_s: float) -> None:
    try:
        ref.stop(timeout=timeout_s)
    except pykka.Timeout:
        log.error("[supervisor] %s did not stop within %.0f s", ref, timeout_s)
    except pykka.ActorDeadError:
        pass


def _stop_together(refs: list[pykka.ActorRef], timeout_s: float) -> None:
    """Stop many actors at once, waiting at most `timeout_s` for all of them together."""
    futures = []
    for ref in refs:
        try:
            futures.append((ref, ref.stop(block=False)))
        except pykka.ActorDeadError:
            pass
    deadline = time.monotonic() + timeout_s
    for ref, future in futures:
        try:
            future.get(timeout=max(0.0, deadline - time.monotonic()))
        except pykka.Timeout:
            log.error("[supervisor] %s did not stop in time", ref)


def build_system(settings: Settings, clock: Optional[Clock] = None, ticker: Optional[Timers] = None, *,
                 store=None, sessions=None, alerts: Optional[Alerts] = None) -> System:
    """Every part of the daemon, not started. `store`, `sessions` and `alerts` replace the
    ones the settings pick (tests)."""
    clock = clock or Clock()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    gate = StartGate(settings.max_starts_per_second, clock)
    store = store if store is not None else make_store(settings)
    metrics = Metrics()
    alerts = alerts or Alerts(settings.instance_id, settings.repair_alert_webhook_url, clock=clock)
    metrics.watch_alerts(alerts)
    return System(
        settings=settings, clock=clock, ticker=ticker or Ticker(clock), metrics=metrics,
        board=Board(settings.instance_id, store.name, clock), store=store,
        spool=Spool(spool_path(settings.data_dir, settings.instance_id), clock), gate=gate,
        sessions=sessions if sessions is not None else make_sessions(settings, gate),
        alerts=alerts,
        calls=ThreadPoolExecutor(max_workers=SESSION_CALL_THREADS, thread_name_prefix="session-call"),
        policy=SupervisionPolicy(hung_after_ms=settings.hung_after_ms, degraded_after_ms=settings.degraded_after_ms,
                                 replaced_retry_s=settings.lease_ms / 1000))


async def serve(system: System, settings: Settings) -> int:
    from aiohttp import web

    from wasync.http.app import RUNNER_OPTIONS, create_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(system.control, settings, system.metrics), handle_signals=False,
                           **RUNNER_OPTIONS)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        await runner.cleanup()
        await loop.run_in_executor(None, system.stop)
        return 1
    log.info("[supervisor] listening on http://%s:%d", settings.host, settings.port)
    watchdog = SystemdWatchdog(Notifier.from_settings(settings), system.board, system.supervisor, system.writer)
    watchdog.start()  # READY=1 once the board says ready; WATCHDOG=1 while the actors answer
    await stop.wait()
    log.info("[supervisor] signal received: draining")
    await watchdog.stop()  # STOPPING=1
    await loop.run_in_executor(None, system.stop)
    await runner.cleanup()
    return 0
