"""The daemon's word to systemd while it serves: READY=1 once it is ready, a STATUS line
with its figures now and then, STOPPING=1 when the drain starts, and WATCHDOG=1 every
half watchdog period only while the supervisor and the writer answer.

The pings come from the event loop, and each round asks both actors something cheap
(through runtime/bridge.py, on an executor of its own) with a timeout shorter than the
period: a stuck supervisor, a stuck writer or a stuck loop all mean no ping, and systemd
restarts the daemon after WatchdogSec. Without NOTIFY_SOCKET none of this runs.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import pykka

from wasync.actors.supervisor_protocol import RunningAccounts
from wasync.actors.writer_protocol import Ping
from wasync.runtime import bridge
from wasync.runtime.board import Board, Snapshot
from wasync.runtime.sdnotify import Notifier

log = logging.getLogger("wasync.watchdog")

STATUS_S = 15.0  # how often STATUS is refreshed when systemd wants no watchdog pings
READY_POLL_S = 0.1
ASK_SHARE = 0.8  # of the ping period: both answers are in (or given up) before the next round


def status_line(snap: Snapshot) -> str:
    connected = sum(1 for a in snap.accounts if a.connected)
    repair = sum(1 for a in snap.accounts if a.needs_repair)
    return (f"STATUS={snap.mode}: {len(snap.accounts)} accounts, {connected} connected, {repair} need repair, "
            f"spool {snap.spool_depth}")


class SystemdWatchdog:
    def __init__(self, notifier: Notifier, board: Board, supervisor: pykka.ActorRef, writer: pykka.ActorRef):
        self.notifier, self.board = notifier, board
        self.asks = (("supervisor", supervisor, RunningAccounts()), ("writer", writer, Ping()))
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        if self.notifier.enabled:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """The drain starts: no more pings (systemd now waits at most TimeoutStopSec)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.notifier.notify("STOPPING=1", "STATUS=draining: stopping sessions, flushing the spool, releasing leases")

    async def run(self) -> None:
        """Until cancelled."""
        while not self.board.snapshot().ready:
            await asyncio.sleep(READY_POLL_S)
        self.notifier.notify("READY=1", status_line(self.board.snapshot()))
        watchdog_s = self.notifier.watchdog_s
        period_s = watchdog_s / 2 if watchdog_s else STATUS_S
        log.info("[supervisor] systemd notified: ready%s", f"; watchdog pings every {period_s:g} s while the "
                 "supervisor and the writer answer" if watchdog_s else "")
        executor = ThreadPoolExecutor(max_workers=len(self.asks), thread_name_prefix="watchdog")
        loop = asyncio.get_running_loop()
        last_status, next_at = None, loop.time()
        try:
            while True:
                lines, status = [], status_line(self.board.snapshot())
                if watchdog_s:
                    silent = await self._silent(period_s * ASK_SHARE, executor)
                    if silent:
                        status = "STATUS=watchdog: " + "; ".join(silent)
                    else:
                        lines.append("WATCHDOG=1")
                if status != last_status:
                    lines.append(status)
                    last_status = status
                if lines:
                    self.notifier.notify(*lines)
                next_at = max(next_at + period_s, loop.time())  # a late round does not bring on a burst
                await asyncio.sleep(next_at - loop.time())
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _silent(self, timeout_s: float, executor) -> list[str]:
        """Ask each watched actor; what went wrong with those that did not answer in time."""
        answers = await asyncio.gather(*(bridge.ask_actor(ref, message, timeout_s, executor=executor)
                                         for _, ref, message in self.asks), return_exceptions=True)
        silent = []
        for (name, _, _), answer in zip(self.asks, answers):
            if not isinstance(answer, BaseException):
                continue
            why = (f"{name} did not answer in {timeout_s:g} s" if isinstance(answer, bridge.BridgeTimeout) else
                   f"{name} is not running" if isinstance(answer, pykka.ActorDeadError) else
                   f"{name} could not be asked ({type(answer).__name__}: {answer})")
            log.warning("[supervisor] watchdog: %s: no WATCHDOG=1 (systemd restarts the daemon after WatchdogSec)",
                        why)
            silent.append(why)
        return silent
