"""Firestore side of ownership: leases, instances, job locks and the outbox.

Every compare-and-set is one short transaction (read, decide, write) run by `run_tx`,
which retries contention itself: the client retries only an aborted *commit*, at once
and without backoff, and the emulator aborts reads too when several processes fight
over one lease document.
"""
from __future__ import annotations

import functools
import random
import time
from typing import Any, Callable, Optional, Sequence, TypeVar

import grpc
from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.auth import exceptions as auth_exc
from google.cloud import firestore
from google.cloud.firestore import FieldFilter

from wasync.runtime.backoff import Backoff
from wasync.runtime import outbox
from wasync.runtime.model import thread_id
from wasync.runtime.outbox import Claim, Decision, OutboxItem, OutboxStatus
from wasync.runtime.store.base import JOBS, BadData, Fence, JobLock, Lease, NotFound, StaleFence, StoreError
from wasync.runtime.store.schema import (
    ACCOUNTS,
    INSTANCES,
    JOB_LOCK_COLLECTION,
    JOB_LOCK_MIRROR,
    LEASES,
    OUTBOX,
    dt_to_ms,
    ms_to_dt,
    outbox_doc,
    outbox_item,
    to_api,
)

T = TypeVar("T")

TX_ATTEMPTS = 8
MAX_BATCH = 500  # writes per batch commit
TX_BACKOFF = Backoff(initial_ms=10, max_ms=500, jitter=0.5)  # between contended attempts
TX_READ_TIMEOUT_S = 10.0  # a read blocked behind another transaction's lock gives up here

# Without these, a read of an unreachable Firestore retries for 300 s and a write for
# 60 s. Writes are resent only on errors that mean "not executed".
_READ_ERRORS = retries.if_exception_type(gexc.DeadlineExceeded, gexc.InternalServerError, gexc.ServiceUnavailable,
                                         gexc.ResourceExhausted)
_WRITE_ERRORS = retries.if_exception_type(gexc.ServiceUnavailable, gexc.ResourceExhausted)


def call_options(deadline_s: float) -> tuple[dict, dict]:
    """(read, write) keyword arguments bounding one call, retries included, to `deadline_s`."""
    def policy(predicate):
        return {"retry": retries.Retry(initial=0.1, maximum=2.0, multiplier=2.0, predicate=predicate,
                                       timeout=deadline_s), "timeout": deadline_s}
    return policy(_READ_ERRORS), policy(_WRITE_ERRORS)


_TX_READ = call_options(TX_READ_TIMEOUT_S)[0]


def store_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Surface transport and service failures as StoreError, which callers retry, and the
    service's refusals of the data itself as BadData, which they must not."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except (gexc.InvalidArgument, gexc.OutOfRange) as exc:
            # The service refuses this data (too large, an invalid value): it always will.
            raise BadData(f"firestore {fn.__name__}: {type(exc).__name__}: {exc}") from exc
        except (gexc.GoogleAPIError, grpc.RpcError, auth_exc.GoogleAuthError) as exc:
            raise StoreError(f"firestore {fn.__name__}: {type(exc).__name__}: {exc}") from exc

    return call


def _aborted(exc: BaseException) -> bool:
    # With max_attempts=1 the client reports an aborted commit as ValueError(from Aborted).
    return isinstance(exc, gexc.Aborted) or (isinstance(exc, ValueError) and isinstance(exc.__cause__, gexc.Aborted))


def run_tx(db: firestore.Client, body: Callable[[Any], T]) -> T:
    for attempt in range(TX_ATTEMPTS):
        try:
            return firestore.transactional(body)(db.transaction(max_attempts=1))
        except (gexc.Aborted, ValueError) as exc:
            if not _aborted(exc):
                # A failed begin surfaces as the ValueError of the rollback that followed it.
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, (gexc.GoogleAPIError, grpc.RpcError)):
                    raise StoreError(f"firestore transaction: {type(cause).__name__}: {cause}") from cause
                raise
            if attempt == TX_ATTEMPTS - 1:
                raise StoreError(f"firestore transaction still contended after {TX_ATTEMPTS} attempts") from exc
        time.sleep(TX_BACKOFF.delay_s(attempt, random.random()))
    raise AssertionError("unreachable")


def tx_read(db: firestore.Client, tx, *refs) -> list[Optional[dict]]:
    """Read `refs` in `tx` with one RPC; None for a missing document, in order."""
    found = {snap.reference.path: snap.to_dict() for snap in
             db.get_all(list(refs), transaction=tx, **_TX_READ) if snap.exists}
    return [found.get(ref.path) for ref in refs]


def check_fence(lease: Optional[dict], fence: Fence, account_id: str) -> None:
    if not _ours(lease, fence.holder, fence.epoch):
        now = f"{lease.get('holder')}@{lease.get('epoch')}" if lease else "none"
        raise StaleFence(f"account {account_id}: fence {fence.holder}@{fence.epoch} is stale (lease {now})")


def _ours(lease: Optional[dict], holder: str, epoch: int) -> bool:
    return bool(lease) and lease.get("holder") == holder and lease.get("epoch") == epoch


def _lease(account_id: str, doc: dict, version: Any = None) -> Lease:
    return Lease(account_id=account_id, holder=doc["holder"], epoch=int(doc["epoch"]),
                 expires_at_ms=int(doc.get("expiresAtMs") or 0), renewed_at_ms=int(doc.get("renewedAtMs") or 0),
                 version=version)


def _renewed(lease: Lease, change: dict, version: Any = None) -> Lease:
    return Lease(lease.account_id, lease.holder, lease.epoch, change["expiresAtMs"], change["renewedAtMs"], version)


class OwnershipOps:
    """Mixed into FirestoreStore; needs `self._db` and the call options `self._read`,
    `self._write` (see `call_options`)."""

    _db: firestore.Client
    _read: dict
    _write: dict

    def _doc(self, collection: str, doc_id: str):
        return self._db.collection(collection).document(doc_id)

    # --- socket ownership ----------------------------------------------------------

    @store_errors
    def acquire_lease(self, account_id: str, holder: str, expected: Optional[Lease], now_ms: int,
                      ttl_ms: int) -> Optional[Lease]:
        ref = self._doc(LEASES, account_id)
        doc = {"holder": holder, "epoch": expected.epoch + 1 if expected else 1, "expiresAtMs": now_ms + ttl_ms,
               "renewedAtMs": now_ms}
        try:
            if expected is None:
                result = ref.create(doc, **self._write)
            elif expected.version is not None:
                # A conditional write, not a transaction: it fails if anything was written
                # since the caller read `expected` (no read, no contention).
                result = ref.update(doc, option=self._db.write_option(last_update_time=expected.version),
                                    **self._write)
            else:
                return self._acquire_in_tx(ref, account_id, expected, doc)
        except (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.NotFound):
            return self._landed(ref, account_id, doc)
        return _lease(account_id, doc, result.update_time)

    def _landed(self, ref, account_id: str, doc: dict) -> Optional[Lease]:
        """The lease as `doc` wrote it if that write is what the precondition found: a
        write resent after it landed (its answer lost) must not read as "taken"."""
        snap = ref.get(**self._read)
        cur = snap.to_dict() if snap.exists else None
        if not _ours(cur, doc["holder"], doc["epoch"]) or cur.get("renewedAtMs") != doc["renewedAtMs"]:
            return None
        return _lease(account_id, cur, snap.update_time)

    def _acquire_in_tx(self, ref, account_id: str, expected: Lease, doc: dict) -> Optional[Lease]:
        def body(tx):
            (cur,) = tx_read(self._db, tx, ref)
            if _ours(cur, doc["holder"], doc["epoch"]) and cur.get("renewedAtMs") == doc["renewedAtMs"]:
                return _lease(account_id, cur)  # an attempt whose commit landed unanswered
            if cur is None or not expected.same_record(_lease(account_id, cur)):
                return None
            tx.set(ref, doc)
            return _lease(account_id, doc)

        return run_tx(self._db, body)

    @store_errors
    def renew_leases(self, leases: Sequence[Lease], now_ms: int, ttl_ms: int) -> list[Lease]:
        """One batch of conditional updates (each must find its lease as we last wrote it);
        if any lease was taken meanwhile the batch fails as a whole, and the batch is done
        again one lease at a time to tell which."""
        change = {"expiresAtMs": now_ms + ttl_ms, "renewedAtMs": now_ms}
        known = [lease for lease in leases if lease.version is not None]
        renewed = [lease for lease in (self._renew_in_tx(lease, change) for lease in leases
                                       if lease.version is None) if lease is not None]
        for start in range(0, len(known), MAX_BATCH):
            chunk = known[start:start + MAX_BATCH]
            batch = self._db.batch()
            for lease in chunk:
                batch.update(self._doc(LEASES, lease.account_id), change,
                             option=self._db.write_option(last_update_time=lease.version))
            try:
                results = batch.commit(**self._write)
            except (gexc.FailedPrecondition, gexc.NotFound):
                renewed += [lease for lease in (self._renew_one(lease, change) for lease in chunk) if lease]
                continue
            renewed += [_renewed(lease, change, r.update_time) for lease, r in zip(chunk, results)]
        return renewed

    def _renew_one(self, lease: Lease, change: dict) -> Optional[Lease]:
        ref = self._doc(LEASES, lease.account_id)
        try:
            result = ref.update(change, option=self._db.write_option(last_update_time=lease.version), **self._write)
        except (gexc.FailedPrecondition, gexc.NotFound):
            pass  # written since we last wrote it: taken, released, or our own write whose answer was lost
        else:
            return _renewed(lease, change, result.update_time)
        snap = ref.get(**self._read)
        cur = snap.to_dict() if snap.exists else None
        if not _ours(cur, lease.holder, lease.epoch) or not cur.get("expiresAtMs"):
            return None  # taken, or released (expiresAtMs = 0)
        try:  # still ours: renew it as it is now
            result = ref.update(change, option=self._db.write_option(last_update_time=snap.update_time),
                                **self._write)
        except (gexc.FailedPrecondition, gexc.NotFound):
            return None
        return _renewed(lease, change, result.update_time)

    def _renew_in_tx(self, lease: Lease, change: dict) -> Optional[Lease]:
        ref = self._doc(LEASES, lease.account_id)

        def body(tx):
            (cur,) = tx_read(self._db, tx, ref)
            if not _ours(cur, lease.holder, lease.epoch) or not cur.get("expiresAtMs"):
                return None  # taken, or released (expiresAtMs = 0)
            tx.update(ref, change)
            return _renewed(lease, change)

        return run_tx(self._db, body)

    @store_errors
    def release_lease(self, account_id: str, holder: str, epoch: int) -> bool:
        ref = self._doc(LEASES, account_id)

        def body(tx):
            (cur,) = tx_read(self._db, tx, ref)
            if not _ours(cur, holder, epoch):
                return False
            # The document (and its epoch) stays, so the next holder gets epoch + 1.
            tx.update(ref, {"expiresAtMs": 0})
            return True

        return run_tx(self._db, body)

    @store_errors
    def get_lease(self, account_id: str) -> Optional[Lease]:
        snap = self._doc(LEASES, account_id).get(**self._read)
        return _lease(snap.id, snap.to_dict(), snap.update_time) if snap.exists else None

    @store_errors
    def list_leases(self) -> list[Lease]:
        return [_lease(s.id, s.to_dict(), s.update_time) for s in self._db.collection(LEASES).stream(**self._read)]

    @store_errors
    def heartbeat_instance(self, instance_id: str, incarnation: str, now_ms: int, started_at_ms: int,
                           version: str, accounts: int) -> None:
        self._doc(INSTANCES, instance_id).set({
            "instanceId": instance_id, "incarnation": incarnation, "startedAt": ms_to_dt(started_at_ms),
            "heartbeatAtMs": now_ms, "version": version, "accounts": accounts}, **self._write)

    @store_errors
    def list_instances(self) -> list[dict]:
        return [to_api({"instanceId": s.id, **s.to_dict()}) for s in self._db.collection(INSTANCES).stream(**self._read)]

    @store_errors
    def remove_instance(self, instance_id: str) -> None:
        self._doc(INSTANCES, instance_id).delete(**self._write)

    # --- job locks -----------------------------------------------------------------

    @store_errors
    def acquire_job_lock(self, job: str, account_id: str, owner: str, now_ms: int, ttl_ms: int,
                         fence: Optional[Fence] = None) -> Optional[JobLock]:
        lock_ref, account_ref, lease_ref = self._job_refs(job, account_id)
        until, holder, acquired = JOB_LOCK_MIRROR[job]

        def body(tx):
            # The lease is read only when fenced: reading it locks it against renewals.
            cur, account, *lease = tx_read(self._db, tx, lock_ref, account_ref, *([lease_ref] if fence else []))
            if fence is not None:
                check_fence(lease[0], fence, account_id)
            live = cur is not None and int(cur.get("expiresAtMs") or 0) > now_ms
            if live and cur.get("ownerId") != owner:
                return None
            started = cur["startedAt"] if live else ms_to_dt(now_ms)
            expires = now_ms + ttl_ms
            tx.set(lock_ref, {"ownerId": owner, "expiresAtMs": expires, "startedAt": started})
            if account is not None:  # update(), not set(): a removed account stays removed
                tx.update(account_ref, {until: ms_to_dt(expires), holder: owner, acquired: started})
            return JobLock(job=job, account_id=account_id, owner=owner, expires_at_ms=expires,
                           started_at_ms=dt_to_ms(started))

        return run_tx(self._db, body)

    @store_errors
    def get_job_lock(self, job: str, account_id: str) -> Optional[JobLock]:
        lock_ref, _, _ = self._job_refs(job, account_id)
        snap = lock_ref.get(**self._read)
        if not snap.exists:
            return None
        d = snap.to_dict()
        return JobLock(job=job, account_id=account_id, owner=d.get("ownerId"), expires_at_ms=int(d.get("expiresAtMs") or 0),
                       started_at_ms=dt_to_ms(d.get("startedAt")) or 0)

    @store_errors
    def release_job_lock(self, job: str, account_id: str, owner: str) -> bool:
        lock_ref, account_ref, _ = self._job_refs(job, account_id)
        until, holder, _acquired = JOB_LOCK_MIRROR[job]

        def body(tx):
            cur, account = tx_read(self._db, tx, lock_ref, account_ref)
            if not cur or cur.get("ownerId") != owner:
                return False
            tx.delete(lock_ref)
            # update(), not set(): a job outliving its account must not bring the account back.
            if account is not None and account.get(holder) == owner:
                tx.update(account_ref, {until: None, holder: None})
            return True

        return run_tx(self._db, body)

    def _job_refs(self, job: str, account_id: str):
        if job not in JOBS:
            raise ValueError(f"unknown job {job!r} (expected one of {JOBS})")
        return (self._doc(JOB_LOCK_COLLECTION[job], account_id), self._doc(ACCOUNTS, account_id),
                self._doc(LEASES, account_id))

    # --- outbox ----------------------------------------------------------------------
    # The item's state changes in one transaction each (runtime/outbox.py's rules); its
    # message document follows through upsert_messages (idempotent, status forward), so
    # pending receipts and the thread documents stay in this store's own hands.

    @store_errors
    def enqueue_outbox(self, item: OutboxItem, now_ms: int) -> tuple[OutboxItem, bool]:
        ref = self._doc(OUTBOX, item.id)
        try:
            ref.create(outbox_doc(item), **self._write)
        except gexc.Conflict:
            return outbox_item(ref.get(**self._read).to_dict()), False
        try:
            self.upsert_messages([item.message()], now_ms)
        except BaseException:
            # Nothing was promised yet: take the item back rather than leave a message that
            # the caller was told failed to be accepted, but will be sent.
            try:
                ref.delete(**self._write)
            except Exception:
                pass  # still queued: its message document is written when it is claimed
            raise
        return item, True

    def _outbox_query(self, statuses: Sequence[str], account_id: Optional[str] = None):
        query = self._db.collection(OUTBOX).where(filter=FieldFilter("status", "in", list(statuses)))
        if account_id is not None:
            query = query.where(filter=FieldFilter("accountId", "==", account_id))
        return query

    @store_errors
    def list_outbox(self, account_id: str, statuses: Sequence[OutboxStatus], limit: int) -> list[OutboxItem]:
        items = [outbox_item(s.to_dict()) for s in
                 self._outbox_query([x.value for x in statuses], account_id).stream(**self._read)]
        return sorted(items, key=lambda i: (i.created_at_ms, i.id))[:max(limit, 0)]

    @store_errors
    def count_outbox(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for snap in (self._outbox_query(["queued", "sending", "unknown"]).select(["accountId", "status"])
                     .stream(**self._read)):
            per = counts.setdefault(snap.get("accountId"), {})
            per[snap.get("status")] = per.get(snap.get("status"), 0) + 1
        return counts

    @store_errors
    def claim_outbox(self, account_id: str, claim: Claim, now_ms: int, limit: int,
                     resend_safe: bool) -> list[OutboxItem]:
        lease_ref = self._doc(LEASES, account_id)
        waiting = self._outbox_query(["queued", "sending"], account_id)

        def body(tx):
            (lease,) = tx_read(self._db, tx, lease_ref)
            check_fence(lease, Fence(claim.holder, claim.epoch), account_id)
            items = [outbox_item(s.to_dict()) for s in waiting.stream(transaction=tx, **_TX_READ)]
            taken = outbox.claim_due(items, claim, now_ms, limit, resend_safe)
            for item in taken:
                tx.set(self._doc(OUTBOX, item.id), outbox_doc(item))
            return taken

        taken = run_tx(self._db, body)
        unknown = [i.message() for i in taken if i.status is OutboxStatus.UNKNOWN]
        if unknown:
            self.upsert_messages(unknown, now_ms)
        return taken

    def _outbox_tx(self, item_id: str, change: Callable[[OutboxItem], OutboxItem]) -> tuple[OutboxItem, OutboxItem]:
        """(before, after) of one item changed in a transaction; `change` may raise."""
        ref = self._doc(OUTBOX, item_id)

        def body(tx):
            (doc,) = tx_read(self._db, tx, ref)
            if doc is None:
                raise NotFound(f"outbox item {item_id} does not exist")
            before = outbox_item(doc)
            after = change(before)
            if after is not before:
                tx.set(ref, outbox_doc(after))
            return before, after

        return run_tx(self._db, body)

    @store_errors
    def record_outbox_sent(self, item_id: str, wa_message_id: str, ts_ms: int, now_ms: int) -> OutboxItem:
        item = self.get_outbox(item_id)
        if item is None:
            raise NotFound(f"outbox item {item_id} does not exist")
        if item.status is OutboxStatus.SENT:
            return item
        # The sent message first: an item marked sent always has its document.
        self.upsert_messages([outbox.sent(item, wa_message_id, ts_ms, now_ms).message()], now_ms)
        before, done = self._outbox_tx(item_id, lambda i: outbox.sent(i, wa_message_id, ts_ms, now_ms))
        if done is not before and done.message_id != item.id:  # sent under WhatsApp's id: the queued copy goes
            self._drop_message(thread_id(item.account_id, item.to_jid), item.id, now_ms)
        return done

    @store_errors
    def settle_outbox(self, item_id: str, claim: Claim, outcome: OutboxItem, now_ms: int) -> OutboxItem:
        def change(item: OutboxItem) -> OutboxItem:
            if not outbox.holds(item, claim):
                raise StaleFence(f"outbox item {item_id} is {item.status.value} under claim {item.claim_id} "
                                 f"({item.claimed_by}@{item.claim_epoch}), not {claim.claim_id}")
            return outcome

        _, settled = self._outbox_tx(item_id, change)
        if settled.status is not OutboxStatus.QUEUED:
            self.upsert_messages([settled.message()], now_ms)
        return settled

    @store_errors
    def decide_outbox(self, item_id: str, decision: Decision, now_ms: int) -> OutboxItem:
        _, decided = self._outbox_tx(item_id, lambda i: outbox.decide(i, decision, now_ms))
        self.upsert_messages([decided.message()], now_ms)
        return decided

    @store_errors
    def get_outbox(self, item_id: str) -> Optional[OutboxItem]:
        snap = self._doc(OUTBOX, item_id).get(**self._read)
        return outbox_item(snap.to_dict()) if snap.exists else None
