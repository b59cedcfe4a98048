"""FirestoreStore: the Store port on Cloud Firestore, in the SPEC §2 layout the inbox
app reads directly.

Conversation writes go through the pure rules of schema.py, so this store and
SqliteStore cannot disagree on what "idempotent" or "never backwards" means: read,
merge, write; or, for messages an account has not stored yet (the bulk of any ingest),
create-if-absent without the read (see `_try_create`). Leases, job locks and the outbox
live in firestore_tx.py, thread histories and repair in firestore_history.py, the client
and its fast encoding in firestore_wire.py.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import google.auth
from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from wasync.runtime.account import AccountPatch, AccountRecord
from wasync.runtime.model import Message, MessageEdit, MessageRevoke, Receipt, ThreadUpdate, thread_id
from wasync.runtime.store.base import PING_TIMEOUT_S, Fence, Page, PhoneInUse, WriteResult
from wasync.runtime.store.firestore_history import HISTORY_READERS, FirestoreHistory
from wasync.runtime.store.firestore_wire import WriteEncoder, emulator_client, fast_set, service_account_credentials
from wasync.runtime.store.firestore_tx import OwnershipOps, call_options, check_fence, run_tx, store_errors, tx_read
from wasync.runtime.store import history, schema
from wasync.runtime.store.schema import (
    ACCOUNTS, LEASES, MESSAGES, PENDING, THREADS, BadCursor, decode_cursor, edit_patch,
    encode_cursor, merge_message, merge_patch, merge_thread, message_doc, ms_to_dt, pending_id, receipt_patch,
    revoke_patch, to_api,
)

MAX_OPS = 500  # writes per batch commit (deletes included)
CHUNK = 500  # messages per read and per commit (one batch: a failed create leaves nothing)
# Chunks of new messages committed at once. One commit is a round trip the writer would
# otherwise wait out before the next (the emulator takes ~100 ms for 500 documents); the
# writer hands over slices of INGEST_SLICE so that there is something to overlap.
COMMITTERS = 4
INGEST_SLICE = CHUNK * COMMITTERS
NAME = FieldPath.document_id()
DESC = firestore.Query.DESCENDING

Key = tuple[str, str]  # (threadId, messageId)


@dataclass
class _Thread:
    """What this process knows about one thread document."""

    stored: Optional[dict] = None  # as last read or written
    read_at: Optional[int] = None  # when `stored` was last read from Firestore (None: never)
    written_at: Optional[int] = None
    held: Optional[ThreadUpdate] = None  # merged updates not written yet (coalescing)
    held_at: int = 0


class FirestoreStore(OwnershipOps, FirestoreHistory):
    name = "firestore"
    holds_back = True  # thread documents, coalesced (~1 write a second per document)

    @store_errors
    def __init__(self, project: str | None = None, *, client=None, credentials_json: str | None = None,
                 thread_coalesce_ms: int = 1000, cache_ms: int = 5000, call_timeout_s: float = 20.0):
        if client is None:
            credentials = None
            if credentials_json:
                credentials, project = service_account_credentials(credentials_json, project)
            client = firestore.Client(project=project, credentials=credentials)
        self._db = client
        self._read, self._write = call_options(call_timeout_s)
        self._coalesce_ms = thread_coalesce_ms
        # Cached thread documents and pending-patch indexes are re-read after this long.
        # Shorter than any lease, so an account that moved to another instance and back
        # is never merged from a copy older than the other instance's writes.
        self._cache_ms = cache_ms
        # Serialises message/pending read-merge-writes within this process: a receipt
        # racing the upsert of its message could otherwise leave its patch pending forever.
        self._conv_lock = threading.Lock()
        self._thread_lock = threading.Lock()  # guards _threads and thread-document writes
        # One account creation at a time: each queries the accounts by phone inside its
        # transaction, and concurrent ones contend for that query (8 at once took 11 s on
        # the emulator, and the API answered 504); in turn they take ~50 ms each.
        self._create_lock = threading.Lock()
        self._threads: dict[str, _Thread] = {}
        self._pending_index: dict[str, tuple[int, set[str]]] = {}  # account -> (loaded at, ids)
        self._fresh: dict[str, bool] = {}  # account -> its last ingest found no stored copy
        self._clock_ms = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="firestore-read")
        self._history_pool = ThreadPoolExecutor(max_workers=HISTORY_READERS, thread_name_prefix="firestore-history")
        self._commit_pool = ThreadPoolExecutor(max_workers=COMMITTERS, thread_name_prefix="firestore-commit")
        self._closed = False

    # History the writer may hand over at once (its bulk slice): COMMITTERS chunks.
    ingest_slice = INGEST_SLICE

    @classmethod
    @store_errors
    def from_settings(cls, settings, **kwargs) -> "FirestoreStore":
        project = settings.google_cloud_project
        if settings.firestore_emulator_host:
            return cls(project, client=emulator_client(project or "wasync-local", settings.firestore_emulator_host),
                       **kwargs)
        if settings.firebase_service_account_json:
            return cls(project, credentials_json=settings.firebase_service_account_json, **kwargs)
        if settings.google_application_credentials:
            credentials, found = google.auth.load_credentials_from_file(settings.google_application_credentials)
            return cls(client=firestore.Client(project=project or found, credentials=credentials), **kwargs)
        return cls(project, **kwargs)

    # --- references ------------------------------------------------------------------

    def _message_ref(self, key: Key):
        return self._db.document(THREADS, key[0], MESSAGES, key[1])

    def _pending_ref(self, key: Key):
        return self._db.document(PENDING, pending_id(*key))

    def _thread_ref(self, tid: str):
        return self._db.document(THREADS, tid)

    # --- messages ----------------------------------------------------------------------

    @store_errors
    def upsert_messages(self, messages: Sequence[Message], now_ms: int) -> WriteResult:
        incoming: dict[Key, dict] = {}
        updates: dict[str, ThreadUpdate] = {}
        for m in messages:
            key, doc, update = (m.thread_id, m.id), message_doc(m), ThreadUpdate.from_message(m)
            incoming[key] = merge_patch(incoming[key], doc) if key in incoming else doc
            updates[key[0]] = updates[key[0]].merge(update) if key[0] in updates else update
        if not incoming:
            return WriteResult()
        now, folded = ms_to_dt(now_ms), 0
        accounts = {key: doc["accountId"] for key, doc in incoming.items()}
        with self._conv_lock:
            steps = _Steps(self, accounts, self._pending_keys(accounts, now_ms))
            created = self._create_fresh(steps, accounts, incoming, now)
            for i, chunk in enumerate(steps.chunks):
                if i in created:
                    continue
                stored, pending = steps.read(i)
                groups = []
                for key in chunk:
                    doc = merge_message(stored.get(key), incoming[key], now)
                    if key in pending:
                        groups.append([(self._message_ref(key), merge_message(doc, pending[key], now)),
                                       (self._pending_ref(key), None)])
                    else:
                        groups.append([(self._message_ref(key), doc)])
                self._commit(groups)
                folded += len(pending)
                self._note_pending(accounts, gone=pending)
                for account_id in {accounts[key] for key in chunk}:
                    self._fresh[account_id] = not any(accounts[key] == account_id for key in stored)
        threads = self._write_threads(updates.values(), now_ms)
        return WriteResult(messages=len(incoming), applied=folded, threads=threads)

    def _create_fresh(self, steps: "_Steps", accounts: dict[Key, str], incoming: dict[Key, dict], now) -> set[int]:
        """Write as new documents, without reading, the chunks whose accounts have lately
        been ingesting only new messages (history sync, realtime): up to COMMITTERS commits
        at once. A commit fails as a whole if any of its documents exists, and that chunk
        takes the read-merge path. Returns the chunks written."""
        chosen = {i: chunk for i, chunk in enumerate(steps.chunks)
                  if all(self._fresh.get(accounts[key], True) for key in chunk)
                  and not any(key in steps.with_pending for key in chunk)}
        futures = {i: self._commit_pool.submit(
            self._commit, [[(self._message_ref(key), merge_message(None, incoming[key], now))] for key in chunk],
            create=True) for i, chunk in chosen.items()}
        created: set[int] = set()
        error: Optional[BaseException] = None
        for i, future in futures.items():  # every one waited for: none left running behind an error
            try:
                future.result()
                created.add(i)
            except gexc.AlreadyExists:
                for account_id in {accounts[key] for key in chosen[i]}:
                    self._fresh[account_id] = False
            except BaseException as exc:  # noqa: BLE001 - raised below, after the others ended
                error = error or exc
        if error is not None:
            raise error
        return created

    @store_errors
    def apply_receipts(self, receipts: Sequence[Receipt], now_ms: int) -> WriteResult:
        patches: dict[Key, tuple[str, dict, int]] = {}
        for r in receipts:
            patch = receipt_patch(r)
            if patch is not None:
                for message_id in r.message_ids:
                    _add_patch(patches, r.account_id, (thread_id(r.account_id, r.client_jid), message_id), patch)
        return self._apply(patches, now_ms)

    @store_errors
    def apply_edits(self, edits: Sequence[MessageEdit], now_ms: int) -> WriteResult:
        patches: dict[Key, tuple[str, dict, int]] = {}
        for e in edits:
            _add_patch(patches, e.account_id, (thread_id(e.account_id, e.client_jid), e.target_id), edit_patch(e))
        return self._apply(patches, now_ms)

    @store_errors
    def apply_revokes(self, revokes: Sequence[MessageRevoke], now_ms: int) -> WriteResult:
        patches: dict[Key, tuple[str, dict, int]] = {}
        for r in revokes:
            _add_patch(patches, r.account_id, (thread_id(r.account_id, r.client_jid), r.target_id), revoke_patch(r))
        return self._apply(patches, now_ms)

    def _apply(self, patches: dict[Key, tuple[str, dict, int]], now_ms: int) -> WriteResult:
        """Patch stored messages; keep patches for absent ones (never a ghost document)."""
        if not patches:
            return WriteResult()
        now, applied, kept = ms_to_dt(now_ms), 0, 0
        accounts = {key: account_id for key, (account_id, _, _) in patches.items()}
        with self._conv_lock:
            steps = _Steps(self, accounts, self._pending_keys(accounts, now_ms))
            for i, chunk in enumerate(steps.chunks):
                stored, pending = steps.read(i)
                groups, added, gone = [], [], []
                for key in chunk:
                    account_id, patch, count = patches[key]
                    earlier = pending.get(key)
                    if earlier is not None:
                        patch = merge_patch(earlier, patch)
                    doc = stored.get(key)
                    if doc is None:
                        kept += count
                        added.append(key)
                        groups.append([(self._pending_ref(key), {
                            "accountId": account_id, "threadId": key[0], "messageId": key[1],
                            "patch": patch, "updatedAt": now})])
                        continue
                    applied += count
                    group = []
                    if earlier is not None:  # left by a race with another instance
                        group.append((self._pending_ref(key), None))
                        gone.append(key)
                    if group or merge_message(doc, patch, None) != doc:
                        group.append((self._message_ref(key), merge_message(doc, patch, now)))
                        groups.append(group)
                self._commit(groups)
                self._note_pending(accounts, added=added, gone=gone)
        return WriteResult(applied=applied, pending=kept)

    def _read_chunk(self, chunk: list[Key], with_pending: set[Key]) -> tuple[dict[Key, dict], dict[Key, dict]]:
        refs = [self._message_ref(key) for key in chunk]
        refs += [self._pending_ref(key) for key in chunk if key in with_pending]
        wanted = {ref.path: key for ref, key in zip(refs, chunk)}  # message documents
        stored: dict[Key, dict] = {}
        pending: dict[Key, dict] = {}
        for snap in self._db.get_all(refs, **self._read):
            if snap.exists:
                doc = snap.to_dict()
                if snap.reference.path in wanted:
                    stored[wanted[snap.reference.path]] = doc
                else:
                    pending[(doc["threadId"], doc["messageId"])] = doc.get("patch") or {}
        return stored, pending

    # An index of the pending patches of each account, so that ingesting a message does
    # not cost a read of its (almost always absent) pending document. Reloaded (ids only)
    # after _cache_ms, like the thread cache, in case another instance wrote some.

    def _pending_keys(self, accounts: dict[Key, str], now_ms: int) -> set[Key]:
        for account_id in set(accounts.values()):
            loaded = self._pending_index.get(account_id)
            if loaded is None or not 0 <= now_ms - loaded[0] < self._cache_ms:
                query = (self._db.collection(PENDING).where(filter=firestore.FieldFilter("accountId", "==", account_id))
                         .select([]))
                self._pending_index[account_id] = (now_ms, {s.id for s in query.stream(**self._read)})
        return {key for key, account_id in accounts.items()
                if pending_id(*key) in self._pending_index[account_id][1]}

    def _note_pending(self, accounts: dict[Key, str], added: Iterable[Key] = (), gone: Iterable[Key] = ()) -> None:
        for keys, change in ((added, set.add), (gone, set.discard)):
            for key in keys:
                loaded = self._pending_index.get(accounts[key])
                if loaded is not None:
                    change(loaded[1], pending_id(*key))

    def _commit(self, groups: Iterable[list[tuple[Any, Optional[dict]]]], create: bool = False) -> None:
        """Commit (ref, doc-or-None-to-delete) writes in batches of at most MAX_OPS;
        the writes of one group always share a batch."""
        batch, ops, encoder = self._db.batch(), 0, WriteEncoder()
        for group in groups:
            if ops + len(group) > MAX_OPS:
                batch.commit(**self._write)
                batch, ops, encoder = self._db.batch(), 0, WriteEncoder()
            for ref, doc in group:
                if doc is None:
                    batch.delete(ref)
                else:
                    fast_set(batch, encoder, ref, doc, create=create)
            ops += len(group)
        if ops:
            batch.commit(**self._write)

    # --- threads (coalesced) -----------------------------------------------------------

    @store_errors
    def update_threads(self, updates: Sequence[ThreadUpdate], now_ms: int) -> WriteResult:
        return WriteResult(threads=self._write_threads(updates, now_ms))

    @store_errors
    def flush(self) -> None:
        self._flush_threads(lambda tid: True)

    def _write_threads(self, updates: Iterable[ThreadUpdate], now_ms: int) -> int:
        """Hold `updates`, then write every thread document that is due."""
        with self._thread_lock:
            self._clock_ms = max(self._clock_ms, now_ms)
            for u in updates:
                t = self._threads.setdefault(u.thread_id, _Thread())
                t.held = u if t.held is None else t.held.merge(u)
                t.held_at = max(t.held_at, now_ms)
            due = [tid for tid, t in self._threads.items() if t.held is not None
                   and (t.written_at is None or now_ms - t.written_at >= self._coalesce_ms)]
            docs = self._thread_docs(due, now_ms)
            self._commit([[(self._thread_ref(tid), doc)] for tid, doc in docs.items()])
            self._written(docs, now_ms)
            self._sweep(now_ms)
            return len(docs)

    def _flush_threads(self, which) -> None:
        with self._thread_lock:
            due = [tid for tid, t in self._threads.items() if t.held is not None and which(tid)]
            if due:
                docs = self._thread_docs(due, self._clock_ms)
                self._commit([[(self._thread_ref(tid), doc)] for tid, doc in docs.items()])
                self._written(docs, self._clock_ms)

    def _thread_docs(self, due: list[str], now_ms: int) -> dict[str, dict]:
        stale = [tid for tid in due if self._threads[tid].read_at is None
                 or now_ms - self._threads[tid].read_at >= self._cache_ms]
        if stale:
            refs = [self._thread_ref(t) for t in stale]
            found = {s.id: s.to_dict() for s in self._db.get_all(refs, **self._read) if s.exists}
            for tid in stale:
                self._threads[tid].stored, self._threads[tid].read_at = found.get(tid), now_ms
        docs = {}
        for tid in due:
            t = self._threads[tid]
            doc = merge_thread(t.stored, t.held, ms_to_dt(t.held_at))
            if doc is None:
                t.held = None  # says nothing the stored document does not
            else:
                docs[tid] = doc
        return docs

    def _written(self, docs: dict[str, dict], now_ms: int) -> None:
        for tid, doc in docs.items():
            t = self._threads[tid]
            t.stored, t.written_at, t.held = doc, now_ms, None

    def _sweep(self, now_ms: int) -> None:
        """Forget threads with nothing held whose copy and write interval are both past."""
        idle = [tid for tid, t in self._threads.items() if t.held is None
                and (t.read_at is None or now_ms - t.read_at >= self._cache_ms)
                and (t.written_at is None or now_ms - t.written_at >= self._coalesce_ms)]
        for tid in idle:
            del self._threads[tid]

    # --- reads ---------------------------------------------------------------------------

    @store_errors
    def get_message(self, account_id: str, chat_jid: str, message_id: str) -> Optional[dict]:
        snap = self._message_ref((thread_id(account_id, chat_jid), message_id)).get(**self._read)
        return to_api(snap.to_dict()) if snap.exists else None

    @store_errors
    def get_thread(self, thread_id: str) -> Optional[dict]:
        # Held updates are written first, so a reader never sees an older thread than
        # the writes that already returned.
        self._flush_threads(lambda tid: tid == thread_id)
        snap = self._thread_ref(thread_id).get(**self._read)
        return to_api(snap.to_dict()) if snap.exists else None

    @store_errors
    def list_threads(self, account_id: str, limit: int = 50, cursor: Optional[str] = None) -> Page:
        """Newest first. Threads without lastMessageAtMs (names only, no message yet) are
        not listed: Firestore's orderBy leaves out documents missing the field."""
        prefix = f"{account_id}__"
        self._flush_threads(lambda tid: tid.startswith(prefix))
        query = self._db.collection(THREADS).where(filter=firestore.FieldFilter("accountId", "==", account_id))
        return self._page(query, "lastMessageAtMs", limit, cursor)

    @store_errors
    def list_messages(self, account_id: str, thread_id: str, limit: int = 50,
                      cursor: Optional[str] = None) -> Page:
        if not thread_id.startswith(f"{account_id}__"):
            if cursor is not None:
                _decode(cursor)
            return Page(items=[], next_cursor=None)
        return self._page(self._db.collection(THREADS, thread_id, MESSAGES), "tsClientMs", limit, cursor)

    def _page(self, query, field: str, limit: int, cursor: Optional[str]) -> Page:
        query = query.order_by(field, direction=DESC).order_by(NAME, direction=DESC)
        if cursor is not None:
            value, doc_id = _decode(cursor)
            query = query.start_after({field: value, NAME: doc_id})
        if limit < 1:
            return Page(items=[], next_cursor=None)
        snaps = list(query.limit(limit + 1).stream(**self._read))
        more, snaps = len(snaps) > limit, snaps[:limit]
        items = [to_api(s.to_dict()) for s in snaps]
        return Page(items=items, next_cursor=encode_cursor(snaps[-1].get(field), snaps[-1].id) if more else None)

    def _drop_message(self, tid: str, message_id: str, now_ms: int) -> None:
        """Remove one message document and make its thread describe its newest message."""
        self._message_ref((tid, message_id)).delete(**self._write)
        self._flush_threads(lambda t: t == tid)
        snap = self._thread_ref(tid).get(**self._read)
        newest = self._bound(tid, DESC)
        if snap.exists and newest is not None:
            fixes, _ = history.plan_repair([(tid, snap.to_dict())], {tid: newest})
            if tid in fixes:
                self._rewrite(snap, {**fixes[tid], "updatedAt": ms_to_dt(now_ms)})

    # --- accounts --------------------------------------------------------------------------

    @store_errors
    def get_account(self, account_id: str) -> Optional[dict]:
        snap = self._db.document(ACCOUNTS, account_id).get(**self._read)
        return to_api(snap.to_dict()) if snap.exists else None

    @store_errors
    def list_accounts(self) -> list[dict]:
        return [to_api({"accountId": s.id, **s.to_dict()}) for s in self._db.collection(ACCOUNTS).stream(**self._read)]

    def list_account_records(self) -> list[AccountRecord]:
        return [schema.account_record(doc) for doc in self.list_accounts()]

    @store_errors
    def create_account(self, account_id: str, phone: Optional[str], now_ms: int) -> bool:
        ref = self._db.document(ACCOUNTS, account_id)
        doc = schema.new_account_doc(account_id, phone, ms_to_dt(now_ms))
        if phone is None:
            try:
                ref.create(doc, **self._write)
                return True
            except gexc.AlreadyExists:
                return False
        same_phone = self._db.collection(ACCOUNTS).where(filter=firestore.FieldFilter("phone", "==", phone)).limit(1)

        def body(tx) -> bool:
            # The query and the read run in the transaction: two adds of one phone at once
            # cannot both find it free.
            (stored,) = tx_read(self._db, tx, ref)
            if stored is not None:
                return False
            holder = next(iter(same_phone.stream(transaction=tx)), None)
            if holder is not None:
                raise PhoneInUse(phone, holder.id)
            tx.create(ref, doc)
            return True

        with self._create_lock:
            return run_tx(self._db, body)

    @store_errors
    def update_account(self, account_id: str, patch: AccountPatch, now_ms: int,
                       fence: Optional[Fence] = None) -> bool:
        ref = self._db.document(ACCOUNTS, account_id)
        if fence is None and not schema.patch_needs_stored(patch):
            # update(), not set(merge): it refuses a missing document (a removed account
            # stays removed) and replaces map values instead of deep-merging them.
            try:
                ref.update({**schema.account_fields(patch, None), "updatedAt": ms_to_dt(now_ms)}, **self._write)
                return True
            except gexc.NotFound:
                return False

        def body(tx) -> bool:
            stored, *lease = tx_read(self._db, tx, ref, *([self._db.document(LEASES, account_id)] if fence else []))
            if fence is not None:
                check_fence(lease[0], fence, account_id)
            if stored is None:
                return False
            tx.update(ref, {**schema.account_fields(patch, stored), "updatedAt": ms_to_dt(now_ms)})
            return True

        return run_tx(self._db, body)

    @store_errors
    def delete_account(self, account_id: str) -> bool:
        try:
            self._db.document(ACCOUNTS, account_id).delete(option=self._db.write_option(exists=True), **self._write)
            return True
        except gexc.NotFound:
            return False

    # --- housekeeping ------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            self._db.document(ACCOUNTS, "_ping").get(retry=None, timeout=PING_TIMEOUT_S)
            return True
        except Exception:  # noqa: BLE001 - ping reports, never raises
            return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._history_pool.shutdown(wait=True, cancel_futures=True)
            self._commit_pool.shutdown(wait=True, cancel_futures=True)
            self._db.close()


class _Steps:
    """The chunks of one call, each read when asked for, with the next chunk's read
    started at once so that it overlaps this chunk's commit."""

    def __init__(self, store: FirestoreStore, accounts: dict[Key, str], with_pending: set[Key]):
        keys = list(accounts)
        self.chunks = [keys[i:i + CHUNK] for i in range(0, len(keys), CHUNK)]
        self.with_pending = with_pending
        self._store = store
        self._reads: dict[int, Future] = {}

    def read(self, i: int) -> tuple[dict[Key, dict], dict[Key, dict]]:
        future = self._reads.pop(i, None) or self._submit(i)
        if i + 1 < len(self.chunks) and i + 1 not in self._reads:
            self._reads[i + 1] = self._submit(i + 1)
        return future.result()

    def _submit(self, i: int) -> Future:
        return self._store._pool.submit(self._store._read_chunk, self.chunks[i], self.with_pending)


def _add_patch(patches: dict, account_id: str, key: Key, patch: dict) -> None:
    """Fold patches for one message; `count` keeps how many were folded."""
    earlier = patches.get(key)
    patches[key] = (account_id, patch, 1) if earlier is None else (
        account_id, merge_patch(earlier[1], patch), earlier[2] + 1)


def _decode(cursor: str) -> tuple[int, str]:
    value, doc_id = decode_cursor(cursor)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadCursor(f"invalid cursor {cursor!r}")
    return value, doc_id
