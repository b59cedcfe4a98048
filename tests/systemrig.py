"""The daemon's real system (`build_system`) on a FakeClock and a FakeTicker, a real
SQLite store and spool, and a ScriptedTransport: supervision driven step by step.

Time only moves when a test calls `advance()`; messages between actors still travel on
their own threads, so after every step the rig waits until every actor has handled
what it was told (`settle()`), round after round, before time moves again.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Optional

import pykka
from pykka.messages import ProxyGetAttr

from transports import ScriptedTransport
from wasync.actors.account import AccountActor
from wasync.actors.lease_io import LeaseIOActor
from wasync.actors.supervisor_protocol import RunningAccounts
from wasync.runtime import config
from wasync.runtime.clock import FakeClock
from wasync.runtime.daemon import System, build_system
from wasync.runtime.ticker import FakeTicker


def _round_trip(ref: pykka.ActorRef, timeout_s: float) -> bool:
    """True once `ref` has handled everything told to it before (a no-op ask); False if it
    did not answer in time (a test made it hang)."""
    try:
        ref.ask(ProxyGetAttr(attr_path=("actor_urn",)), timeout=timeout_s)
    except pykka.ActorDeadError:
        pass
    except pykka.Timeout:
        return False
    return True


class SystemRig:
    def __init__(self, tmp_path: Path, accounts: Iterable[tuple[str, Optional[str]]] = (), *, transport=None,
                 store=None, instance_id: str = "i1", **env: str):
        settings = config.load({"WASYNC_DATA_DIR": str(tmp_path / "data"), "INSTANCE_ID": instance_id,
                                "WASYNC_MAX_STARTS_PER_SECOND": "100", **env})
        self.clock = FakeClock()
        self.ticker = FakeTicker(self.clock, settle=lambda: self.settle())
        self.transport = transport if transport is not None else ScriptedTransport()
        self.system: System = build_system(settings, self.clock, self.ticker, sessions=self.transport, store=store)
        self.store, self.board, self.metrics = self.system.store, self.system.board, self.system.metrics
        for account_id, phone in accounts:
            self.store.create_account(account_id, phone, self.clock.wall_ms())
        self.stopped = False
        self._hung: set[str] = set()  # account actors that stopped answering (fault injection)

    def start(self) -> "SystemRig":
        self.system.start()
        self.settle()
        return self

    @property
    def supervisor(self) -> pykka.ActorRef:
        return self.system.supervisor

    @property
    def control(self):
        return self.system.control

    # The longest chain of messages one event sets off here (a lease lost: coordinator ->
    # supervisor -> child -> supervisor -> coordinator -> store helper -> coordinator), with
    # room to spare. Each round of no-op asks moves every chain on by at least one hop.
    MIN_ROUNDS = 12

    def settle(self, max_rounds: int = 40) -> None:
        """Every actor has handled what it was told, cascades included. An empty inbox alone
        proves nothing (the actor may be busy with what it just took from it), so at least
        MIN_ROUNDS rounds of no-op asks run, then more until two rounds find nothing queued."""
        quiet = 0
        for n in range(max_rounds):
            for ref in self._refs():
                if not _round_trip(ref, 10 if ref.actor_class is not AccountActor else 0.5):
                    self._hung.add(ref.actor_urn)
            quiet = quiet + 1 if all(ref.actor_inbox.empty() for ref in self._refs()) else 0
            if n + 1 >= self.MIN_ROUNDS and quiet >= 2:
                return

    def _refs(self) -> list[pykka.ActorRef]:
        s = self.system
        refs = [ref for ref in (s.leases, *pykka.ActorRegistry.get_by_class(LeaseIOActor), s.supervisor, s.sweeper,
                                s.scheduler, s.writer, *pykka.ActorRegistry.get_by_class(AccountActor)) if ref is not None]
        return [ref for ref in refs if ref.actor_urn not in self._hung]

    def advance(self, seconds: float, step: Optional[float] = None) -> None:
        """Move time forward (in `step`s, settling after each: the ticker already settles
        after every timer it fires, so one step is enough unless a test watches between)."""
        left = seconds
        while left > 1e-9:
            dt = min(step or left, left)
            self.ticker.advance(dt)
            self.settle()
            left -= dt

    def until(self, predicate, timeout_s: float = 20.0, step: float = 0.2, what: str = "condition"):
        """Advance fake time in steps until `predicate()` is truthy (real I/O, such as a
        simulator's answers, needs a little real time too); its value, or AssertionError."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            self.advance(step, step)
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def running(self) -> tuple[str, ...]:
        return self.supervisor.ask(RunningAccounts(), timeout=5)

    def restarts(self, reason: str) -> float:
        return self.metrics.restarts.labels(reason=reason)._value.get()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if isinstance(self.transport, ScriptedTransport):
            self.transport.release()
        self.system.stop(drain_s=5)
