"""OwnershipActor: decides which accounts this instance runs, and tells the supervisor
`Owned` / `Lost`. Today that is every enabled account in the store; the lease
coordinator (DESIGN.md "Ownership across instances") will take this room.

The account list is read here, off the supervisor's thread (a frozen store stalls this
actor, never liveness checks), one read at a time and at least every READ_EVERY_S. The
owned set only moves forward: each read starts after the previous one has ended and
only its differences are told, so an older read can never undo a newer one (an account
added a moment ago is never stopped as "removed" by a read that began before it was
added). A failed read changes nothing. The owned set is also published on the board,
where the sweeper reads which accounts it must leave to an actor.
"""
from __future__ import annotations

import logging
from typing import Optional

import pykka

from wasync.actors.ownership_protocol import OwnershipMsg, ReadDue, Refresh
from wasync.actors.supervisor_protocol import Lost, Owned
from wasync.runtime.account import AccountRecord
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.ticker import Timers

log = logging.getLogger("wasync.ownership")

READ_EVERY_S = 2.0


class OwnershipActor(pykka.ThreadingActor):
    def __init__(self, store, supervisor: pykka.ActorRef, board: Board, ticker: Timers, clock: Clock,
                 read_every_s: float = READ_EVERY_S):
        super().__init__()
        self.store, self.supervisor, self.board, self.ticker, self.clock = store, supervisor, board, ticker, clock
        self.read_every_s = read_every_s
        self.owned: dict[str, AccountRecord] = {}
        self.board_owned: Optional[frozenset[str]] = None
        self._last_read_started_s = float("-inf")
        self._failing = False

    def on_start(self) -> None:
        self.actor_ref.tell(ReadDue())

    def on_receive(self, message: OwnershipMsg):
        match message:
            case Refresh(requested_s=requested):
                if requested >= self._last_read_started_s:
                    self._read()
            case ReadDue():
                self._read()
                self.ticker.later(self.actor_ref, ReadDue(), self.read_every_s)

    def _read(self) -> None:
        self._last_read_started_s = self.clock.monotonic_s()
        try:
            records = self.store.list_account_records()
        except Exception as exc:
            if not self._failing:
                log.warning("[supervisor] could not read the account list (keeping the %d accounts run now): %s",
                            len(self.owned), exc)
            self._failing = True
            return
        if self._failing:
            log.info("[supervisor] the account list can be read again")
        self._failing = False
        wanted = {r.account_id: r for r in records if r.enabled}
        disabled = {r.account_id for r in records if not r.enabled}
        if self.board_owned != wanted.keys():
            self.board_owned = frozenset(wanted)
            self.board.publish_owned(self.board_owned)  # first: the sweeper leaves these alone
        for account_id in sorted(self.owned.keys() - wanted.keys()):
            del self.owned[account_id]
            self.supervisor.tell(Lost(account_id, "disabled" if account_id in disabled else "removed"))
        for account_id in sorted(wanted.keys() - self.owned.keys()):
            self.owned[account_id] = wanted[account_id]
            self.supervisor.tell(Owned(wanted[account_id]))
