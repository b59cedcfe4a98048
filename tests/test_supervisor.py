"""SupervisorActor with real actors, a real SQLite store, spool and writer, and a transport
whose sessions cannot start (the one failure that needs no WhatsApp at all). Backoff is
shortened so the intensity limit is reached in well under a second; the end-to-end tests
(test_e2e_supervision.py) run the default timings against the simulator.
"""
from __future__ import annotations

import logging

import pykka
import pytest

from simproc import wait_for
from wasync.actors.account import AccountActor
from wasync.actors.messages import ChildFailed
from wasync.runtime.backoff import Backoff
from wasync.actors.startgate import StartGate
from wasync.actors.supervisor import SupervisionPolicy, SupervisorActor
from wasync.actors.writer import IngestBatch, StoreWriterActor
from wasync.runtime.alerts import Alerts
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.model import AccountStatus
from wasync.runtime.spool import Spool
from wasync.runtime.store.sqlite import SqliteStore

FAST = SupervisionPolicy(backoff=Backoff(initial_ms=20, max_ms=100))


class BrokenTransport:
    def __init__(self):
        self.opened = 0
        self.forgotten = []

    def forget(self, account_id):
        self.forgotten.append(account_id)

    def open(self, account_id, phone, sink):
        self.opened += 1
        raise RuntimeError("no transport in this build")


class Rig:
    def __init__(self, tmp_path, accounts, policy=FAST):
        self.clock = Clock()
        self.store = SqliteStore(tmp_path / "store.db")
        for doc in accounts:
            self.store.merge_account(doc["accountId"], doc, self.clock.wall_ms())
        self.spool = Spool(tmp_path / "spool.db")
        self.board, self.metrics = Board("i1", "sqlite", self.clock), Metrics()
        self.alerts = Alerts("i1", None, clock=self.clock)
        self.writer = StoreWriterActor.start(self.store, self.spool, self.board, self.metrics, self.clock)
        self.transport = BrokenTransport()

        def make_child(account_id, phone, supervisor, slot, fresh_pairing=False):
            return AccountActor.start(account_id, phone, sessions=self.transport, spool=self.spool,
                                      writer=self.writer, board=self.board, metrics=self.metrics, clock=self.clock,
                                      dry_run_history=False, supervisor=supervisor, slot=slot,
                                      fresh_pairing=fresh_pairing)

        def write_fields(account_id, fields):
            self.writer.tell(IngestBatch(account_id, account_fields=dict(fields)))

        self.supervisor = SupervisorActor.start(
            make_child, self.store.list_accounts, self.board, self.metrics, StartGate(100, self.clock),
            clock=self.clock, alerts=self.alerts, write_fields=write_fields, policy=policy)

    def close(self):
        self.supervisor.stop(timeout=20)
        pykka.ActorRegistry.stop_all(timeout=20)
        self.alerts.close(1)
        self.store.close()
        self.spool.close()


@pytest.fixture
def rig_factory(tmp_path):
    made = []

    def make(accounts, **kw):
        made.append(Rig(tmp_path, accounts, **kw))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def test_restarts_stop_at_the_intensity_limit_and_the_account_needs_repair(rig_factory, caplog):
    caplog.set_level(logging.INFO)
    rig = rig_factory([{"accountId": "a1", "enabled": True}])
    rig.supervisor.tell("reconcile")
    state = wait_for(lambda: (lambda s: s if s and s.status is AccountStatus.NEEDS_REPAIR else None)(
        rig.board.account("a1")), 10, "needs_repair after the restarts ran out")
    assert rig.transport.opened == 6  # the first start and 5 restarts; the 6th restart is refused
    assert state.needs_repair and "6 restarts in 10 min (limit 5)" in state.repair_reason
    assert "no transport in this build" in state.repair_reason and state.restarts == 5
    assert set(rig.alerts.open_incidents()) == {"a1"}
    doc = wait_for(lambda: (lambda d: d if d.get("needsRepair") else None)(rig.store.get_account("a1")), 10,
                   "needsRepair in the store")
    assert doc["status"] == "needs_repair" and doc["repairRequestedAt"] and "6 restarts" in doc["repairReason"]
    assert rig.metrics.restarts.labels(reason="failure")._value.get() == 5
    assert "[supervisor] accountId=a1 needs re-pair" in caplog.text
    # Given up means given up: nothing starts it again on later ticks.
    rig.supervisor.tell("reconcile")
    assert rig.supervisor.ask("children") == []
    assert rig.transport.opened == 6


def test_an_operator_restart_gives_a_fresh_budget(rig_factory):
    rig = rig_factory([{"accountId": "a1"}])
    rig.supervisor.tell("reconcile")
    wait_for(lambda: rig.alerts.open_incidents(), 10, "the first give-up")
    rig.supervisor.tell(("restart", "a1"))
    wait_for(lambda: rig.transport.opened == 12, 10, "six more starts after the operator's restart")
    assert rig.transport.forgotten == ["a1"] * 6  # every start pairs afresh until a pairing succeeds
    wait_for(lambda: rig.board.account("a1").status is AccountStatus.NEEDS_REPAIR, 10, "given up again")


def test_an_account_the_store_marks_for_repair_is_not_started(rig_factory):
    rig = rig_factory([{"accountId": "a1", "needsRepair": True, "repairReason": "logged out (LOGGED_OUT)",
                        "status": "logged_out"}, {"accountId": "a2", "enabled": False}])
    rig.supervisor.tell("reconcile")
    state = wait_for(lambda: rig.board.account("a1"), 5, "a1 on the board")
    assert state.status is AccountStatus.LOGGED_OUT and state.needs_repair
    assert "pair it again" in state.warning
    assert rig.supervisor.ask("children") == [] and rig.transport.opened == 0
    assert set(rig.alerts.open_incidents()) == {"a1"}  # opened silently: no second alert
    assert rig.board.account("a2") is None


def test_reports_from_a_replaced_actor_are_ignored(rig_factory):
    rig = rig_factory([{"accountId": "a1"}], policy=SupervisionPolicy(backoff=Backoff(initial_ms=60_000,
                                                                                         max_ms=60_000)))
    rig.supervisor.tell("reconcile")
    wait_for(lambda: rig.metrics.restarts.labels(reason="failure")._value.get() == 1, 5, "the first restart")
    rig.supervisor.tell(ChildFailed("a1", "stale news", urn="urn:uuid:someone-else"))
    rig.supervisor.tell(ChildFailed("nobody", "unknown account"))
    rig.supervisor.ask("children")  # processed after the two tells
    assert rig.metrics.restarts.labels(reason="failure")._value.get() == 1
    assert rig.board.account("a1").restarts == 1
