"""OutboxActor: sends one account's outbox (SPEC §5), one item at a time, in order.

Started by the account's actor next to its session and stopped with it. It claims items
under the account's lease fence plus an id of its own (runtime/outbox.py), calls the
transport on its own thread — so a 30 s send never holds up the account's ingest — and
records the outcome. The rules that make a message go out at most once live in
runtime/outbox.py and the stores; here is only the order of things:

    claim (stored `sending`) -> transport call -> record (`sent`, `queued` again, `failed`
    or `unknown`)

What it could not record because the store was down is kept and written at the next
poke: an item this actor holds is never claimed again by it, and only a successor (after
this actor is gone) may treat it as an orphan.
"""
from __future__ import annotations

import logging
import os
import signal
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

import pykka

from wasync.actors.outbox_protocol import ArmCrash, Linked, OutboxMsg, Poke, Refenced
from wasync.actors.slot import SessionSlot
from wasync.runtime import outbox
from wasync.runtime.clock import Clock
from wasync.runtime.metrics import Metrics
from wasync.runtime.outbox import Claim, OutboxItem, OutboxStatus
from wasync.runtime.store.base import Fence, StaleFence, StoreError
from wasync.runtime.ticker import Timers
from wasync.runtime.transport.session import (
    InvalidRecipient, NotConnected, NotOnWhatsApp, RateLimited, Refused, SendResult,
)

log = logging.getLogger("wasync.outbox")

# Items claimed at a time. One: a successor that finds this actor's claim (it died, or its
# account restarted mid-send) must treat the item as possibly sent, and only the item in
# the transport call really may be; a batch would turn the rest of it into orphans too.
BATCH = 1
SEND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class OutboxDeps:
    store: object
    clock: Clock
    ticker: Timers
    metrics: Metrics
    poll_ms: int = 10_000
    expire_ms: int = 24 * 60 * 60_000
    send_timeout_s: float = SEND_TIMEOUT_S


class OutboxActor(pykka.ThreadingActor):
    use_daemon_thread = True  # a send stuck in the transport must not keep the process alive

    def __init__(self, account_id: str, fence: Fence, slot: SessionSlot, deps: OutboxDeps, resend_safe: bool):
        super().__init__()
        self.account_id, self.slot, self.deps = account_id, slot, deps
        self.resend_safe = resend_safe  # the transport sends under item.id (a resend is the same message)
        self.claim = Claim(fence.holder, fence.epoch, uuid.uuid4().hex)
        self.connected = False
        self.unwritten: dict[str, Callable[[], object]] = {}  # item id -> the write the store refused
        self.crash_at: Optional[str] = None
        self._poll = None

    def on_start(self) -> None:
        self._poll = self.deps.ticker.every(self.actor_ref, Poke(), self.deps.poll_ms / 1000)

    def on_stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()

    def on_receive(self, message: OutboxMsg) -> None:
        try:
            match message:
                case Poke():
                    self._work()
                case Linked(connected=connected):
                    self.connected = connected
                    if connected:
                        self._work()
                case Refenced(fence=fence):
                    self.claim = Claim(fence.holder, fence.epoch, self.claim.claim_id)
                case ArmCrash(point=point):
                    self.crash_at = point
        except Exception:
            # Never let an exception stop this actor silently: the items stay stored, and
            # the next poke (or a successor) takes them up again.
            log.exception("[outbox] accountId=%s unexpected error", self.account_id)
            self.deps.metrics.actor_failures.labels(actor="outbox").inc()

    # --- the work -----------------------------------------------------------------------

    def _work(self) -> None:
        if not self._write_unwritten() or not self.connected:
            return
        while self.connected:
            try:
                items = self.deps.store.claim_outbox(self.account_id, self.claim, self.deps.clock.wall_ms(), BATCH,
                                                     self.resend_safe)
            except StaleFence as exc:
                log.warning("[outbox] accountId=%s not claiming: %s", self.account_id, exc)
                return
            except StoreError as exc:
                log.warning("[outbox] accountId=%s claim failed (store): %s", self.account_id, exc)
                return
            for item in items:
                self._handle(item)
            if len(items) < BATCH:
                return

    def _handle(self, item: OutboxItem) -> None:
        now = self.deps.clock.wall_ms()
        if item.status is OutboxStatus.UNKNOWN:
            self._count("unknown")
            log.warning("[outbox] accountId=%s item=%s unknown: %s", self.account_id, item.id, item.error)
            return
        if now - item.created_at_ms > self.deps.expire_ms:
            minutes = self.deps.expire_ms // 60_000
            self._settle(item, outbox.give_up(item, OutboxStatus.FAILED, f"expired: not sent within {minutes} min of "
                                                                            "being queued", now), "expired")
            return
        session = self.slot.current()
        if session is None:
            self.connected = False
            self._settle(item, outbox.retry(item, "no session", now), "retry")
            return
        self._crash_if("claimed")
        started = self.deps.clock.monotonic_s()
        try:
            sent = session.send_text(item.to_jid, item.text, message_id=item.id if self.resend_safe else None,
                                     timeout_s=self.deps.send_timeout_s)
        except (NotConnected, RateLimited) as exc:  # certainly not sent
            self.connected = self.connected and not isinstance(exc, NotConnected)
            self._settle(item, outbox.retry(item, f"{exc.reason}: {exc}", self.deps.clock.wall_ms()), "retry")
        except (InvalidRecipient, NotOnWhatsApp, Refused) as exc:  # never will be
            self._settle(item, outbox.give_up(item, OutboxStatus.FAILED, f"{exc.reason}: {exc}",
                                              self.deps.clock.wall_ms()), "failed")
        except Exception as exc:  # it may have gone out
            reason = f"{type(exc).__name__}: {exc}"
            now = self.deps.clock.wall_ms()
            if self.resend_safe:
                self._settle(item, outbox.retry(item, reason, now), "retry")
            else:
                self._settle(item, outbox.give_up(item, OutboxStatus.UNKNOWN, f"may have been sent: {reason}", now),
                             "unknown")
        else:
            self.deps.metrics.outbox_send_seconds.observe(self.deps.clock.monotonic_s() - started)
            self._crash_if("sent")
            self._record_sent(item, sent)

    def _record_sent(self, item: OutboxItem, sent: SendResult) -> None:
        def write():
            return self.deps.store.record_outbox_sent(item.id, sent.message_id, sent.ts_ms, self.deps.clock.wall_ms())

        if self._write(item.id, write):
            self._count("sent")
            log.info("[outbox] accountId=%s item=%s sent id=%s attempts=%d", self.account_id, item.id,
                     sent.message_id, item.attempts)

    def _settle(self, item: OutboxItem, outcome: OutboxItem, result: str) -> None:
        if self._write(item.id, lambda: self.deps.store.settle_outbox(item.id, self.claim, outcome,
                                                                      self.deps.clock.wall_ms())):
            self._count(result)
            if outcome.status is OutboxStatus.QUEUED:  # look again when it is due, not at the next poll
                delay_s = max(0, outcome.next_attempt_at_ms - self.deps.clock.wall_ms()) / 1000
                self.deps.ticker.later(self.actor_ref, Poke(), delay_s)
            level = logging.INFO if outcome.status is OutboxStatus.QUEUED else logging.WARNING
            log.log(level, "[outbox] accountId=%s item=%s %s: %s", self.account_id, item.id, result, outcome.error)

    def _write(self, item_id: str, write: Callable[[], object]) -> bool:
        try:
            write()
            return True
        except StaleFence as exc:
            log.warning("[outbox] accountId=%s item=%s not ours any more: %s", self.account_id, item_id, exc)
            return False
        except StoreError as exc:
            log.warning("[outbox] accountId=%s item=%s outcome kept until the store answers: %s", self.account_id,
                        item_id, exc)
            self.unwritten[item_id] = write
            return False

    def _write_unwritten(self) -> bool:
        """Write what the store refused earlier; False while it still refuses."""
        for item_id, write in list(self.unwritten.items()):
            del self.unwritten[item_id]
            if not self._write(item_id, write) and item_id in self.unwritten:
                return False
        return True

    def _count(self, result: str) -> None:
        self.deps.metrics.outbox_results.labels(result).inc()

    def _crash_if(self, point: str) -> None:
        if self.crash_at == point:
            log.warning("[outbox] accountId=%s injected crash at %s: SIGKILL", self.account_id, point)
            os.kill(os.getpid(), signal.SIGKILL)


def start_outbox(account_id: str, fence: Optional[Fence], slot: SessionSlot, deps: Optional[OutboxDeps],
                 resend_safe: bool) -> Optional[pykka.ActorRef]:
    """The account's outbox actor, or None where there is nothing to send with (no fence:
    the account is not held under a lease here; no deps: outbox not wired)."""
    if fence is None or deps is None:
        return None
    return OutboxActor.start(account_id, fence, slot, deps, resend_safe)
