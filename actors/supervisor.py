"""SupervisorActor (minimal, issue 5): one AccountActor per enabled account.

pykka has no links or monitors, so the supervisor builds them: a child that fails tells
it `ChildFailed` (from its handler or its `on_failure` hook) and is replaced after a
pause; nothing dies silently. Starts are paced (at most `max_starts_per_second`) so 500
accounts do not connect at once. The wanted set of accounts comes from the store
(`reconcile`), so accounts added or removed from another process are picked up too.
Full supervision (health verdicts, backoff policy, intensity, alerts) is issue 7.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Optional

import pykka

from wasync.actors.account import ChildFailed
from wasync.actors.timers import tell_later
from wasync.runtime.board import Board
from wasync.runtime.metrics import Metrics

log = logging.getLogger("wasync.supervisor")

RESTART_AFTER_S = 2.0


class _StartNext:
    pass


class SupervisorActor(pykka.ThreadingActor):
    def __init__(self, make_child: Callable[[str, Optional[str], pykka.ActorRef], pykka.ActorRef],
                 list_accounts: Callable[[], list[dict]], board: Board, metrics: Metrics,
                 max_starts_per_second: float):
        super().__init__()
        self.make_child = make_child
        self.list_accounts = list_accounts
        self.board, self.metrics = board, metrics
        self.interval_s = 1.0 / max_starts_per_second
        self.children: dict[str, pykka.ActorRef] = {}
        self.wanted: dict[str, Optional[str]] = {}  # account id -> phone
        self.queue: deque[str] = deque()
        self._timer: Optional[threading.Timer] = None
        self.closing = False

    def on_receive(self, message):
        try:
            if message == "reconcile":
                self._reconcile()
            elif isinstance(message, _StartNext):
                self._timer = None
                self._start_next()
            elif isinstance(message, ChildFailed):
                self._child_failed(message)
            elif message == "children":
                return sorted(self.children)
            elif isinstance(message, tuple) and message[0] == "child":
                return self.children.get(message[1])
            elif isinstance(message, tuple) and message[0] == "restart":
                self._stop_child(message[1])
                self._reconcile()
            elif message == "stop_sessions":
                self._stop_sessions()
            elif message == "stop_all":
                self._stop_all()
        except Exception:
            # The supervisor must outlive its children's troubles.
            log.exception("[supervisor] unexpected error")
            self.metrics.actor_failures.labels(actor="supervisor").inc()

    def on_stop(self):
        self._stop_all()

    def _reconcile(self) -> None:
        if self.closing:
            return
        accounts = self.list_accounts()
        self.wanted = {a["accountId"]: a.get("phone") for a in accounts if a.get("enabled", True)}
        for account_id in list(self.children):
            if account_id not in self.wanted:
                self._stop_child(account_id)
                self.board.drop_account(account_id)
                log.info("[supervisor] accountId=%s stopped (removed)", account_id)
        for account_id in self.wanted:
            if account_id not in self.children and account_id not in self.queue:
                self.queue.append(account_id)
        self._pace()

    def _pace(self) -> None:
        if self.queue and self._timer is None:
            self._timer = tell_later(self.actor_ref, _StartNext(), 0)

    def _start_next(self) -> None:
        while self.queue:
            account_id = self.queue.popleft()
            if account_id in self.wanted and account_id not in self.children:
                try:
                    self.children[account_id] = self.make_child(account_id, self.wanted[account_id], self.actor_ref)
                    log.info("[supervisor] accountId=%s started", account_id)
                except Exception as exc:
                    log.exception("[supervisor] accountId=%s could not start: %s", account_id, exc)
                    self.queue.append(account_id)
                break
        if self.queue:
            self._timer = tell_later(self.actor_ref, _StartNext(), self.interval_s)

    def _child_failed(self, failure: ChildFailed) -> None:
        log.warning("[supervisor] accountId=%s failed: %s; restarting in %.0fs",
                    failure.account_id, failure.error, RESTART_AFTER_S)
        self._stop_child(failure.account_id)
        tell_later(self.actor_ref, "reconcile", RESTART_AFTER_S)

    def _stop_child(self, account_id: str) -> None:
        child = self.children.pop(account_id, None)
        if child is not None:
            try:
                child.stop(timeout=15)
            except pykka.Timeout:
                log.warning("[supervisor] accountId=%s did not stop within 15 s", account_id)
            except pykka.ActorDeadError:
                pass

    def _stop_sessions(self) -> None:
        """Shutdown, step one: no new events; the actors keep draining the spool."""
        self.closing = True
        if self._timer:
            self._timer.cancel()
        self.queue.clear()
        for child in self.children.values():
            child.tell("stop_session")

    def _stop_all(self) -> None:
        if self._timer:
            self._timer.cancel()
        self.queue.clear()
        for account_id in list(self.children):
            self._stop_child(account_id)
