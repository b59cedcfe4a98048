"""SqliteStore's ownership half: leases with fencing epochs, instance heartbeats, job
locks and the outbox. Each verb is one BEGIN IMMEDIATE transaction, so they hold across
processes sharing the file. Mixed into SqliteStore (runtime/store/sqlite.py), whose
plumbing (`_write`, `_conn`, account documents) it uses.
"""
from __future__ import annotations

from typing import Optional, Sequence

from wasync.runtime.store import schema
from wasync.runtime import outbox
from wasync.runtime.model import thread_id
from wasync.runtime.outbox import Claim, Decision, OutboxItem, OutboxStatus
from wasync.runtime.store.base import JOBS, Fence, JobLock, Lease, NotFound, StaleFence
from wasync.runtime.store.schema import ms_to_dt, to_api
from wasync.runtime.store.sqlite_codec import decode, encode


class SqliteOwnership:
    # --- leases ------------------------------------------------------------------

    @staticmethod
    def _lease_row(conn, account_id: str) -> Optional[Lease]:
        row = conn.execute("SELECT holder, epoch, expires_at_ms, renewed_at_ms FROM leases WHERE account_id = ?",
                           (account_id,)).fetchone()
        return Lease(account_id, *row) if row else None

    def _check_fence(self, conn, account_id: str, fence: Fence) -> None:
        lease = self._lease_row(conn, account_id)
        if lease is None or lease.holder != fence.holder or lease.epoch != fence.epoch:
            raise StaleFence(f"account {account_id}: fence {fence.holder}/{fence.epoch} is stale "
                             f"(lease: {lease.holder + '/' + str(lease.epoch) if lease else 'none'})")

    def _put_lease(self, conn, lease: Lease) -> Lease:
        conn.execute(
            "INSERT INTO leases (account_id, holder, epoch, expires_at_ms, renewed_at_ms) VALUES (?,?,?,?,?) "
            "ON CONFLICT (account_id) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, "
            "expires_at_ms = excluded.expires_at_ms, renewed_at_ms = excluded.renewed_at_ms",
            (lease.account_id, lease.holder, lease.epoch, lease.expires_at_ms, lease.renewed_at_ms),
        )
        return lease

    def acquire_lease(self, account_id: str, holder: str, expected: Optional[Lease], now_ms: int,
                      ttl_ms: int) -> Optional[Lease]:
        with self._write() as conn:
            current = self._lease_row(conn, account_id)
            epoch = expected.epoch + 1 if expected is not None else 1
            if current is not None and (current.holder, current.epoch, current.renewed_at_ms) == (holder, epoch, now_ms):
                return current  # this very call again (its answer was lost): it did take it
            if not (current.same_record(expected) if current is not None else expected is None):
                return None  # written since the caller read it
            return self._put_lease(conn, Lease(account_id, holder, epoch, now_ms + ttl_ms, now_ms))

    def renew_leases(self, leases: Sequence[Lease], now_ms: int, ttl_ms: int) -> list[Lease]:
        renewed = []
        with self._write() as conn:  # one transaction for all of them
            for lease in leases:
                if conn.execute(
                        "UPDATE leases SET expires_at_ms = ?, renewed_at_ms = ? WHERE account_id = ? AND holder = ? "
                        "AND epoch = ? AND expires_at_ms > 0",
                        (now_ms + ttl_ms, now_ms, lease.account_id, lease.holder, lease.epoch)).rowcount:
                    renewed.append(Lease(lease.account_id, lease.holder, lease.epoch, now_ms + ttl_ms, now_ms))
        return renewed

    def release_lease(self, account_id: str, holder: str, epoch: int) -> bool:
        # The row (and its epoch) stays, so the next holder gets epoch + 1.
        with self._write() as conn:
            return conn.execute(
                "UPDATE leases SET expires_at_ms = 0 WHERE account_id = ? AND holder = ? AND epoch = ?",
                (account_id, holder, epoch)).rowcount > 0

    def get_lease(self, account_id: str) -> Optional[Lease]:
        return self._lease_row(self._conn(), account_id)

    def list_leases(self) -> list[Lease]:
        rows = self._conn().execute(
            "SELECT account_id, holder, epoch, expires_at_ms, renewed_at_ms FROM leases ORDER BY account_id")
        return [Lease(*row) for row in rows]

    def heartbeat_instance(self, instance_id: str, incarnation: str, now_ms: int, started_at_ms: int,
                           version: str, accounts: int) -> None:
        doc = {"instanceId": instance_id, "incarnation": incarnation, "startedAt": ms_to_dt(started_at_ms),
               "heartbeatAtMs": now_ms, "version": version, "accounts": accounts}
        with self._write() as conn:
            conn.execute("INSERT INTO instances (instance_id, doc) VALUES (?, ?) "
                         "ON CONFLICT (instance_id) DO UPDATE SET doc = excluded.doc", (instance_id, encode(doc)))

    def list_instances(self) -> list[dict]:
        rows = self._conn().execute("SELECT doc FROM instances ORDER BY instance_id")
        return [to_api(decode(doc)) for (doc,) in rows]

    def remove_instance(self, instance_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

    # --- job locks ---------------------------------------------------------------

    def acquire_job_lock(self, job: str, account_id: str, owner: str, now_ms: int, ttl_ms: int,
                         fence: Optional[Fence] = None) -> Optional[JobLock]:
        if job not in JOBS:
            raise ValueError(f"unknown job {job!r}; expected one of {JOBS}")
        with self._write() as conn:
            if fence is not None:
                self._check_fence(conn, account_id, fence)
            row = conn.execute("SELECT owner, expires_at_ms, started_at_ms FROM job_locks "
                               "WHERE job = ? AND account_id = ?", (job, account_id)).fetchone()
            if row and row[0] != owner and row[1] > now_ms:
                return None
            started = row[2] if row and row[0] == owner and row[1] > now_ms else now_ms
            lock = JobLock(job, account_id, owner, now_ms + ttl_ms, started)
            conn.execute(
                "INSERT INTO job_locks (job, account_id, owner, expires_at_ms, started_at_ms) VALUES (?,?,?,?,?) "
                "ON CONFLICT (job, account_id) DO UPDATE SET owner = excluded.owner, "
                "expires_at_ms = excluded.expires_at_ms, started_at_ms = excluded.started_at_ms",
                (job, account_id, owner, lock.expires_at_ms, lock.started_at_ms))
            self._mirror_lock(conn, job, account_id, lock)
            return lock

    def get_job_lock(self, job: str, account_id: str) -> Optional[JobLock]:
        if job not in JOBS:
            raise ValueError(f"unknown job {job!r}; expected one of {JOBS}")
        row = self._conn().execute("SELECT owner, expires_at_ms, started_at_ms FROM job_locks "
                                   "WHERE job = ? AND account_id = ?", (job, account_id)).fetchone()
        return None if row is None else JobLock(job, account_id, row[0], row[1], row[2])

    def release_job_lock(self, job: str, account_id: str, owner: str) -> bool:
        with self._write() as conn:
            gone = conn.execute("DELETE FROM job_locks WHERE job = ? AND account_id = ? AND owner = ?",
                                (job, account_id, owner)).rowcount > 0
            if gone:
                self._clear_lock_mirror(conn, job, account_id, owner)
            return gone

    def _mirror_lock(self, conn, job: str, account_id: str, lock: JobLock) -> None:
        """Mirror a job lock into the account document (SPEC §2), if there still is one: a
        lock taken just after a removal must not bring back a partial account."""
        until, holder, acquired = schema.JOB_LOCK_MIRROR[job]
        doc = self._account_doc(conn, account_id)
        if not doc:
            return
        doc.update({until: ms_to_dt(lock.expires_at_ms), holder: lock.owner, acquired: ms_to_dt(lock.started_at_ms),
                    "accountId": account_id})
        self._put_account(conn, account_id, doc)

    def _clear_lock_mirror(self, conn, job: str, account_id: str, owner: str) -> None:
        """Only an account that still exists and still names this owner: a release must
        not bring back an account deleted during a long backfill."""
        until, holder, _ = schema.JOB_LOCK_MIRROR[job]
        doc = self._account_doc(conn, account_id)
        if doc.get(holder) == owner:
            doc.update({until: None, holder: None})
            self._put_account(conn, account_id, doc)

    # --- outbox ------------------------------------------------------------------
    # Each verb is one transaction over the outbox row and the item's message document.

    def enqueue_outbox(self, item: OutboxItem, now_ms: int) -> tuple[OutboxItem, bool]:
        with self._write() as conn:
            stored = self._outbox_row(conn, item.id)
            if stored is not None:
                return stored, False
            conn.execute("INSERT INTO outbox (id, account_id, status, created_at_ms, doc) VALUES (?,?,?,?,?)",
                         (item.id, item.account_id, item.status.value, item.created_at_ms,
                          encode(schema.outbox_doc(item))))
            self._upsert(conn, [item.message()], now_ms)
            return item, True

    def get_outbox(self, item_id: str) -> Optional[OutboxItem]:
        return self._outbox_row(self._conn(), item_id)

    def list_outbox(self, account_id: str, statuses: Sequence[OutboxStatus], limit: int) -> list[OutboxItem]:
        marks = ",".join("?" * len(statuses))
        rows = self._conn().execute(f"SELECT doc FROM outbox WHERE account_id = ? AND status IN ({marks}) "
                                    "ORDER BY created_at_ms, id LIMIT ?",
                                    (account_id, *[s.value for s in statuses], limit)).fetchall()
        return [schema.outbox_item(decode(doc)) for (doc,) in rows]

    def count_outbox(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for account_id, status, n in self._conn().execute(
                "SELECT account_id, status, COUNT(*) FROM outbox WHERE status IN ('queued', 'sending', 'unknown') "
                "GROUP BY account_id, status"):
            counts.setdefault(account_id, {})[status] = n
        return counts

    def claim_outbox(self, account_id: str, claim: Claim, now_ms: int, limit: int,
                     resend_safe: bool) -> list[OutboxItem]:
        with self._write() as conn:
            self._check_fence(conn, account_id, Fence(claim.holder, claim.epoch))
            rows = conn.execute("SELECT doc FROM outbox WHERE account_id = ? AND status IN ('queued', 'sending')",
                                (account_id,)).fetchall()
            taken = outbox.claim_due([schema.outbox_item(decode(doc)) for (doc,) in rows], claim, now_ms, limit,
                                     resend_safe)
            for item in taken:
                self._put_outbox(conn, item)
                if item.status is OutboxStatus.UNKNOWN:
                    self._upsert(conn, [item.message()], now_ms)
            return taken

    def record_outbox_sent(self, item_id: str, wa_message_id: str, ts_ms: int, now_ms: int) -> OutboxItem:
        with self._write() as conn:
            item = self._stored_outbox(conn, item_id)
            done = outbox.sent(item, wa_message_id, ts_ms, now_ms)
            if done is item:
                return item
            self._put_outbox(conn, done)
            self._upsert(conn, [done.message()], now_ms)
            if done.message_id != item.id:  # sent under WhatsApp's id: the queued copy goes
                self._drop_message(conn, thread_id(item.account_id, item.to_jid), item.id, now_ms)
            return done

    def settle_outbox(self, item_id: str, claim: Claim, outcome: OutboxItem, now_ms: int) -> OutboxItem:
        with self._write() as conn:
            item = self._stored_outbox(conn, item_id)
            if not outbox.holds(item, claim):
                raise StaleFence(f"outbox item {item_id} is {item.status.value} under claim {item.claim_id} "
                                 f"({item.claimed_by}@{item.claim_epoch}), not {claim.claim_id}")
            self._put_outbox(conn, outcome)
            if outcome.status is not OutboxStatus.QUEUED:
                self._upsert(conn, [outcome.message()], now_ms)
            return outcome

    def decide_outbox(self, item_id: str, decision: Decision, now_ms: int) -> OutboxItem:
        with self._write() as conn:
            item = self._stored_outbox(conn, item_id)
            decided = outbox.decide(item, decision, now_ms)
            self._put_outbox(conn, decided)
            self._upsert(conn, [decided.message()], now_ms)
            return decided

    def _stored_outbox(self, conn, item_id: str) -> OutboxItem:
        item = self._outbox_row(conn, item_id)
        if item is None:
            raise NotFound(f"outbox item {item_id} does not exist")
        return item

    @staticmethod
    def _outbox_row(conn, item_id: str) -> Optional[OutboxItem]:
        row = conn.execute("SELECT doc FROM outbox WHERE id = ?", (item_id,)).fetchone()
        return schema.outbox_item(decode(row[0])) if row else None

    @staticmethod
    def _put_outbox(conn, item: OutboxItem) -> None:
        conn.execute("UPDATE outbox SET status = ?, doc = ? WHERE id = ?",
                     (item.status.value, encode(schema.outbox_doc(item)), item.id))
