"""What the HTTP surface (and the CLI) may ask of a running daemon, and the facade that
answers it over the running system.

Read-only calls return published snapshots and never block or fail because the store or
an actor is slow; admin calls may block (the HTTP layer runs them through
runtime/bridge.py in an executor, with a timeout). The facade only reads the store, reads
the board and tells actors; where an answer comes from an actor it waits on a Reply,
never inside an actor.
"""
from __future__ import annotations

import logging
from typing import Optional, Protocol

import pykka

from wasync.actors.leases_protocol import Refresh
from wasync.actors.reply import new_reply
from wasync.actors.scheduler_protocol import StartBackfill
from wasync.actors.account_protocol import SendWaiting
from wasync.actors.supervisor_protocol import (
    BlockSupervisor, InjectFault, RequestPairingCode, RestartAccount, ToAccount,
)
from wasync.runtime.backfill import ThreadHistory
from wasync.runtime.board import Board, Snapshot
from wasync.runtime import outbox
from wasync.runtime.clock import Clock
from wasync.runtime.outbox import Decision, OutboxConflict, OutboxItem, OutboxStatus
from wasync.runtime.store.base import NotFound, Page
from wasync.runtime.transport.session import NotConnected

log = logging.getLogger("wasync.control")

REPLY_TIMEOUT_S = 60.0  # pairing by phone code can take most of a minute on neonize


class AccountExists(ValueError):
    pass


class UnknownAccount(KeyError):
    pass


class RunsElsewhere(RuntimeError):
    """The account is not run by this instance: another one holds its lease (ask that
    one), or nobody does yet (it is about to start somewhere)."""

    def __init__(self, account_id: str, holder: Optional[str]):
        self.account_id, self.holder = account_id, holder
        super().__init__(f"account {account_id} runs on instance {holder}: send this to that instance" if holder else
                         f"account {account_id} is not running on any instance yet; retry in a few seconds")


class DaemonControl(Protocol):
    def snapshot(self) -> Snapshot:
        """Never blocks; never raises."""

    def list_accounts(self) -> list[dict]:
        """The stored account documents (http/views.py lays the live state over them)."""

    def get_account(self, account_id: str) -> dict:
        """The stored account document. Raises UnknownAccount."""

    def add_account(self, account_id: str, phone: Optional[str]) -> dict:
        """Register an account and start it (pairing if it has no session). Raises
        AccountExists, or store.base.PhoneInUse. Returns the account document."""

    def remove_account(self, account_id: str) -> None:
        """Stop its session and forget the account. Raises UnknownAccount."""

    def current_qr(self, account_id: str) -> Optional[str]:
        """The pairing code to show now, None when the account is not pairing. Never
        blocks (snapshot) for an account running here. Raises UnknownAccount."""

    def pair_phone(self, account_id: str, phone: str) -> str:
        """An 8-character code to type on the phone (while pairing). Raises
        UnknownAccount, or a transport SessionError (e.g. NotConnected)."""

    def regenerate_qr(self, account_id: str, new_pairing: bool = False) -> None:
        """Restart the account's session so pairing starts over with a fresh code (a new
        pairing for an account that needs repair, or with `new_pairing`: the stored session
        is forgotten). Raises UnknownAccount, or RunsElsewhere when another instance runs
        the account."""

    def start_backfill(self, account_id: str) -> str:
        """Start a backfill of the account now; returns its run id once its job lock is
        held. Raises UnknownAccount, RunsElsewhere, NotConnected, or
        scheduler_protocol.BackfillRunning (here or on another instance)."""

    def backfill_status(self, account_id: str, threads: int) -> tuple[dict, list[ThreadHistory]]:
        """The account document and the histories of its `threads` most recent threads.
        Raises UnknownAccount."""

    def list_threads(self, account_id: str, limit: int, cursor: Optional[str]) -> Page:
        """The account's threads, newest first (store.schema.BadCursor for a bad cursor).
        Raises UnknownAccount."""

    def list_messages(self, account_id: str, thread_id: str, limit: int, cursor: Optional[str]) -> Page:
        """A thread's messages, newest first. Raises UnknownAccount."""

    def send_message(self, account_id: str, to_jid: str, text: str,
                     client_message_id: Optional[str]) -> tuple[OutboxItem, Optional[dict], bool]:
        """Queue a text (stored before anything is sent): (item, its message document,
        created). A repeated clientMessageId returns the stored item (created False), or
        raises OutboxConflict if it named another message. Raises UnknownAccount."""

    def get_outbox(self, item_id: str) -> OutboxItem:
        """Raises store.base.NotFound."""

    def list_outbox(self, account_id: str, statuses: list[OutboxStatus], limit: int) -> list[OutboxItem]: ...

    def decide_outbox(self, item_id: str, decision: Decision) -> OutboxItem:
        """An operator's word on an unknown or failed item. Raises NotFound, OutboxConflict."""

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """account -> {status: n} of items waiting (queued, sending, unknown)."""

    def inject_fault(self, account_id: str, kind: str) -> None:
        """Test-only fault injection ("raise" | "block") into the account's actor; the HTTP
        route exists only with WASYNC_DEBUG_FAULTS. Raises UnknownAccount, NotConnected."""

    def block_supervisor(self) -> None:
        """Test-only (WASYNC_DEBUG_FAULTS): the supervisor blocks in a handler for good, so
        that the systemd watchdog stops pinging. Returns once it has."""


def queue_message(store, account_id: str, to_jid: str, text: str, client_message_id: Optional[str],
                  now_ms: int) -> tuple[OutboxItem, Optional[dict], bool]:
    """DaemonControl.send_message's store part: the item and its queued message, stored."""
    asked = OutboxItem(id=outbox.new_item_id(account_id, client_message_id), account_id=account_id, to_jid=to_jid,
                       text=text, created_at_ms=now_ms, client_message_id=client_message_id)
    item, created = store.enqueue_outbox(asked, now_ms)
    if not created and not outbox.same_request(item, asked):
        raise OutboxConflict(f"clientMessageId {client_message_id!r} was used for another message "
                             f"(outbox item {item.id}, to {item.to_jid})")
    if created:
        log.info("[outbox] accountId=%s item=%s queued to=%s chars=%d", account_id, item.id, to_jid, len(text))
    return item, store.get_message(account_id, item.to_jid, item.message_id), created


class SystemControl:
    """DaemonControl over a running system (runtime/daemon.py wires it)."""

    def __init__(self, store, board: Board, clock: Clock, supervisor: pykka.ActorRef, leases: pykka.ActorRef,
                 scheduler: Optional[pykka.ActorRef] = None, reply_timeout_s: float = REPLY_TIMEOUT_S):
        self.store, self.board, self.clock = store, board, clock
        self.supervisor, self.leases, self.scheduler = supervisor, leases, scheduler
        self.reply_timeout_s = reply_timeout_s

    def snapshot(self) -> Snapshot:
        return self.board.snapshot()

    def list_accounts(self) -> list[dict]:
        return self.store.list_accounts()

    def get_account(self, account_id: str) -> dict:
        doc = self.store.get_account(account_id)
        if doc is None:
            raise UnknownAccount(account_id)
        return doc

    def add_account(self, account_id: str, phone: Optional[str]) -> dict:
        if not self.store.create_account(account_id, phone, self.clock.wall_ms()):
            raise AccountExists(account_id)
        self._refresh()
        log.info("[supervisor] accountId=%s added phone=%s", account_id, phone or "-")
        return self.store.get_account(account_id)

    def remove_account(self, account_id: str) -> None:
        if not self.store.delete_account(account_id):
            raise UnknownAccount(account_id)
        self._refresh()
        log.info("[supervisor] accountId=%s removed", account_id)

    def current_qr(self, account_id: str) -> Optional[str]:
        if self.board.account(account_id) is None:
            self._known(account_id)
        return self.board.qr(account_id)

    def pair_phone(self, account_id: str, phone: str) -> str:
        reply = new_reply()
        self.supervisor.tell(RequestPairingCode(account_id, phone, reply))
        try:
            return reply.get(timeout=self.reply_timeout_s)
        except NotConnected:
            self._known(account_id)
            raise

    def regenerate_qr(self, account_id: str, new_pairing: bool = False) -> None:
        self._known(account_id)
        self._here(account_id)
        self.supervisor.tell(RestartAccount(account_id, new_pairing))
        log.info("[supervisor] accountId=%s pairing restarted (regenerate-qr%s)", account_id,
                 ", new pairing" if new_pairing else "")

    def start_backfill(self, account_id: str) -> str:
        self._known(account_id)
        self._here(account_id)
        reply = new_reply()
        self.scheduler.tell(StartBackfill(account_id, reply))
        started = reply.get(timeout=self.reply_timeout_s)
        log.info("[auto-backfill] accountId=%s manual backfill started run=%s", account_id, started.run_id)
        return started.run_id

    def backfill_status(self, account_id: str, threads: int) -> tuple[dict, list[ThreadHistory]]:
        doc = self.store.get_account(account_id)
        if doc is None:
            raise UnknownAccount(account_id)
        return doc, self.store.list_thread_histories(account_id, threads)

    def inject_fault(self, account_id: str, kind: str) -> None:
        reply = new_reply()
        self.supervisor.tell(InjectFault(account_id, kind, reply))
        try:
            reply.get(timeout=self.reply_timeout_s)
        except NotConnected:
            self._known(account_id)
            raise
        log.warning("[supervisor] accountId=%s fault injected: %s", account_id, kind)

    def block_supervisor(self) -> None:
        reply = new_reply()
        self.supervisor.tell(BlockSupervisor(reply))
        reply.get(timeout=self.reply_timeout_s)

    def list_threads(self, account_id: str, limit: int, cursor: Optional[str]) -> Page:
        self._known(account_id)
        return self.store.list_threads(account_id, limit, cursor)

    def list_messages(self, account_id: str, thread_id: str, limit: int, cursor: Optional[str]) -> Page:
        self._known(account_id)
        return self.store.list_messages(account_id, thread_id, limit, cursor)

    def send_message(self, account_id: str, to_jid: str, text: str,
                     client_message_id: Optional[str]) -> tuple[OutboxItem, Optional[dict], bool]:
        self._known(account_id)
        item, message, created = queue_message(self.store, account_id, to_jid, text, client_message_id,
                                               self.clock.wall_ms())
        if created:
            # Sent at once if the account runs here; otherwise its holder's poll finds it.
            self.supervisor.tell(ToAccount(account_id, SendWaiting()))
        return item, message, created

    def get_outbox(self, item_id: str) -> OutboxItem:
        item = self.store.get_outbox(item_id)
        if item is None:
            raise NotFound(f"no outbox item {item_id}")
        return item

    def list_outbox(self, account_id: str, statuses: list[OutboxStatus], limit: int) -> list[OutboxItem]:
        self._known(account_id)
        return self.store.list_outbox(account_id, statuses, limit)

    def decide_outbox(self, item_id: str, decision: Decision) -> OutboxItem:
        item = self.store.decide_outbox(item_id, decision, self.clock.wall_ms())
        log.warning("[outbox] accountId=%s item=%s operator decided: %s", item.account_id, item_id, decision.value)
        if item.status is OutboxStatus.QUEUED:
            self.supervisor.tell(ToAccount(item.account_id, SendWaiting()))
        return item

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        return self.store.count_outbox()

    def _here(self, account_id: str) -> None:
        """Raise RunsElsewhere unless this instance runs the account."""
        if self.board.account(account_id) is None:
            leases = self.board.snapshot().leases
            holder = leases.holders.get(account_id) if leases is not None else None
            raise RunsElsewhere(account_id, holder[0] if holder else None)

    def _known(self, account_id: str) -> None:
        if self.board.account(account_id) is None and self.store.get_account(account_id) is None:
            raise UnknownAccount(account_id)

    def _refresh(self) -> None:
        try:
            self.leases.tell(Refresh())
        except pykka.ActorDeadError:
            pass  # shutting down: the change is stored, the next start reads it
