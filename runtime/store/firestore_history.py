"""FirestoreStore's backfill half: thread histories and thread repair. Mixed into
FirestoreStore (runtime/store/firestore.py), whose client, call options and thread cache
it uses.

Queries need no index beyond the one list_threads already needs (README: `threads` on
accountId, lastMessageAtMs DESC, __name__ DESC): a thread's bounds are one-field orders
on its own messages, its size a count aggregation. Several threads are read at once
on a small pool (each thread's three reads in turn: a pool task never waits on another).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from wasync.runtime.backfill import RepairResult, ThreadHistory
from wasync.runtime.model import thread_id
from wasync.runtime.store import history
from wasync.runtime.store.firestore_tx import store_errors
from wasync.runtime.store.schema import MESSAGES, THREADS, ms_to_dt

NAME = FieldPath.document_id()
ASC, DESC = firestore.Query.ASCENDING, firestore.Query.DESCENDING
HISTORY_READERS = 8  # threads read at once


class FirestoreHistory:
    _history_pool: ThreadPoolExecutor  # HISTORY_READERS workers, made by FirestoreStore

    @store_errors
    def thread_history(self, account_id: str, chat_jid: str) -> Optional[ThreadHistory]:
        tid = thread_id(account_id, chat_jid)
        self._flush_threads(lambda t: t == tid)
        snap = self._thread_ref(tid).get(**self._read)
        return self._history(account_id, tid, snap.to_dict() if snap.exists else None)

    @store_errors
    def list_thread_histories(self, account_id: str, limit: int,
                              active_since_ms: Optional[int] = None) -> list[ThreadHistory]:
        snaps = self._account_threads(account_id, limit, active_since_ms)
        return list(self._history_pool.map(lambda s: self._history(account_id, s.id, s.to_dict()), snaps))

    @store_errors
    def repair_threads(self, account_id: str, limit: int, now_ms: int) -> RepairResult:
        snaps = self._account_threads(account_id, limit)
        newest = {s.id: doc for s, doc in zip(snaps, self._history_pool.map(lambda s: self._bound(s.id, DESC), snaps))
                  if doc is not None}
        fixes, missing = history.plan_repair([(s.id, s.to_dict()) for s in snaps], newest)
        read = {s.id: s for s in snaps}
        fixed = 0
        for tid, fields in fixes.items():
            fixed += self._rewrite(read[tid], {**fields, "updatedAt": ms_to_dt(now_ms)})
        return RepairResult(checked=len(snaps), fixed=fixed, missing=missing)

    def _rewrite(self, snap, change: dict) -> bool:
        """Update a thread document only if it is still as read (never recreating one
        removed meanwhile), and keep this process's copy of it in step: held updates are
        merged into that copy and written whole."""
        with self._thread_lock:
            cached = self._threads.get(snap.id)
            try:
                snap.reference.update(change, option=self._db.write_option(last_update_time=snap.update_time),
                                      **self._write)
            except (gexc.FailedPrecondition, gexc.NotFound):
                if cached is not None:
                    cached.read_at = None  # written elsewhere since: read it again before merging
                return False  # the next pass looks at it again
            if cached is not None:
                cached.stored = {**snap.to_dict(), **change}
            return True

    def _account_threads(self, account_id: str, limit: int, active_since_ms: Optional[int] = None) -> list:
        """The account's thread documents, latest lastMessageAtMs first, then those
        without one (by id, descending: where SQLite sorts its NULLs)."""
        prefix = f"{account_id}__"
        self._flush_threads(lambda tid: tid.startswith(prefix))
        if limit < 1:
            return []
        mine = self._db.collection(THREADS).where(filter=firestore.FieldFilter("accountId", "==", account_id))
        query = mine
        if active_since_ms is not None:
            query = query.where(filter=firestore.FieldFilter("lastMessageAtMs", ">=", active_since_ms))
        snaps = list(query.order_by("lastMessageAtMs", direction=DESC).order_by(NAME, direction=DESC)
                     .limit(limit).stream(**self._read))
        if len(snaps) < limit and active_since_ms is None:
            # orderBy leaves out documents without the field: find them by id.
            seen = {s.id for s in snaps}
            rest = sorted((s.id for s in mine.select([]).stream(**self._read) if s.id not in seen),
                          reverse=True)[:limit - len(snaps)]
            found = {s.id: s for s in self._db.get_all([self._thread_ref(t) for t in rest], **self._read)
                     if s.exists}
            snaps += [found[t] for t in rest if t in found]
        return snaps

    def _history(self, account_id: str, tid: str, doc: Optional[dict]) -> Optional[ThreadHistory]:
        oldest = self._bound(tid, ASC, history.BOUND_FIELDS)
        newest = self._bound(tid, DESC, history.BOUND_FIELDS)
        stored = int(self._db.collection(THREADS, tid, MESSAGES).count().get(**self._read)[0][0].value)
        return history.thread_history(account_id, history.chat_of(account_id, tid), doc, oldest, newest, stored)

    def _bound(self, tid: str, direction: str, fields: Optional[tuple[str, ...]] = None) -> Optional[dict]:
        """The thread's first message in (tsClientMs, id) order, `direction`; ties go by id
        in the same direction, so a single-field index serves it."""
        query = (self._db.collection(THREADS, tid, MESSAGES).order_by("tsClientMs", direction=direction)
                 .order_by(NAME, direction=direction))
        if fields is not None:
            query = query.select(list(fields))
        for snap in query.limit(1).stream(**self._read):
            return {**snap.to_dict(), "id": snap.id}
        return None
