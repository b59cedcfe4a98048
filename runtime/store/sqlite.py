"""SqliteStore: the embedded default store (one file under WASYNC_DATA_DIR).

Documents are kept as JSON next to the few columns that queries sort or filter on, so
the API returns the same JSON as from Firestore. Every write is one `BEGIN IMMEDIATE`
transaction: several processes on one host can share the file (leases work across
processes), and the read-merge-write of schema.py is atomic. WAL mode lets readers run
while a writer commits. Callers are actor threads; each thread gets its own connection.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from wasync.runtime.model import Message, MessageEdit, MessageRevoke, Receipt, ThreadUpdate, thread_id
from wasync.runtime.store import schema
from wasync.runtime.store.base import (
    JOBS, Fence, JobLock, Lease, OutboxItem, Page, StaleFence, StoreError, WriteResult,
)
from wasync.runtime.store.schema import Increment, ServerTime, merge_message, ms_to_dt, to_api

log = logging.getLogger("wasync.store.sqlite")

# Versioned migrations; `PRAGMA user_version` records how many have run.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        thread_id TEXT NOT NULL, id TEXT NOT NULL, account_id TEXT NOT NULL,
        ts_client_ms INTEGER NOT NULL, doc TEXT NOT NULL,
        PRIMARY KEY (thread_id, id)) WITHOUT ROWID;
    CREATE INDEX messages_newest ON messages (thread_id, ts_client_ms DESC, id DESC);
    CREATE TABLE pending_updates (
        thread_id TEXT NOT NULL, message_id TEXT NOT NULL, account_id TEXT NOT NULL,
        patch TEXT NOT NULL, PRIMARY KEY (thread_id, message_id)) WITHOUT ROWID;
    CREATE TABLE threads (
        thread_id TEXT PRIMARY KEY, account_id TEXT NOT NULL,
        last_message_at_ms INTEGER, doc TEXT NOT NULL) WITHOUT ROWID;
    CREATE INDEX threads_newest ON threads (account_id, last_message_at_ms DESC, thread_id DESC);
    CREATE TABLE accounts (account_id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE leases (
        account_id TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL, renewed_at_ms INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE instances (instance_id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE job_locks (
        job TEXT NOT NULL, account_id TEXT NOT NULL, owner TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL, started_at_ms INTEGER NOT NULL,
        PRIMARY KEY (job, account_id)) WITHOUT ROWID;
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY, account_id TEXT NOT NULL, status TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL, doc TEXT NOT NULL) WITHOUT ROWID;
    CREATE INDEX outbox_queue ON outbox (account_id, status, created_at_ms);
    """,
)


def _encode(doc: dict, now: Optional[datetime] = None, now_plain: Optional[dict] = None) -> str:
    # Timestamps become {"$ts": ms} in one pass, so the C encoder runs without calling
    # back into Python for every datetime (the store's hottest line under history sync).
    # A batch stamps every document with the same `now`: converted once by the caller.
    return _dumps({k: (now_plain if v is now else _plain(v)) if type(v) in _CONVERT else v
                   for k, v in doc.items()})


_dumps = json.JSONEncoder(separators=(",", ":")).encode
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$ts": (value - _EPOCH) // _MS}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# Types _plain must see (subclasses such as DatetimeWithNanoseconds are rare here: they
# only come from Firestore, and then fall back to isinstance inside _plain).
_CONVERT = {datetime, dict, list, tuple}


def _decode_hook(obj: dict) -> Any:
    if len(obj) == 1 and "$ts" in obj:
        return ms_to_dt(obj["$ts"])
    return obj


def _decode(text: Optional[str]) -> Optional[dict]:
    return None if text is None else json.loads(text, object_hook=_decode_hook)


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: str | Path, busy_timeout_ms: int = 30_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._migrate()
        self._closed = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True)
        self._checkpointer.start()

    @classmethod
    def from_settings(cls, settings) -> "SqliteStore":
        return cls(Path(settings.data_dir) / "wasync.db")

    # --- plumbing ----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_timeout_ms / 1000)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run on the checkpointer thread, not inside a writer's commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the file lock is taken at BEGIN so that the reads
        inside see what the writes will be based on (no lost updates across processes)."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: cannot begin a write: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"sqlite: {exc}") from exc
            raise

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(f"{self.path} has schema version {version}, newer than this wasync "
                                 f"({len(MIGRATIONS)}); upgrade wasync")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number + 1}")

    def _checkpoint_loop(self, every_s: float = 1.0) -> None:
        """Copy the WAL back into the database once a second (PASSIVE: never waits for
        readers or writers), so the WAL stays small and commits stay cheap."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        try:
            while not self._closed.wait(every_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("sqlite checkpoint of %s failed: %s", self.path, exc)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("sqlite final checkpoint of %s failed: %s", self.path, exc)
        finally:
            conn.close()

    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error:
            return False

    def flush(self) -> None:
        """Nothing is held back: local writes are cheap, so thread docs are not coalesced."""

    def close(self) -> None:
        self._closed.set()
        if self._checkpointer.is_alive() and self._checkpointer is not threading.current_thread():
            self._checkpointer.join(timeout=30)
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    # --- messages ----------------------------------------------------------------

    def upsert_messages(self, messages: Sequence[Message], now_ms: int) -> WriteResult:
        if not messages:
            return WriteResult()
        now = ms_to_dt(now_ms)
        now_plain = _plain(now)
        keys = list({(m.thread_id, m.id): None for m in messages})
        with self._write() as conn:
            docs = self._load(conn, "messages", "id", "doc", keys)
            patches = self._load(conn, "pending_updates", "message_id", "patch", keys)
            newest: dict[str, Message] = {}
            for m in messages:
                key = (m.thread_id, m.id)
                docs[key] = merge_message(docs.get(key), schema.message_doc(m), now)
                best = newest.get(key[0])
                if best is None or (m.ts_client_ms, m.id) > (best.ts_client_ms, best.id):
                    newest[key[0]] = m
            for key, patch in patches.items():
                docs[key] = merge_message(docs[key], patch, now)
            conn.executemany(
                "INSERT INTO messages (thread_id, id, account_id, ts_client_ms, doc) VALUES (?,?,?,?,?) "
                "ON CONFLICT (thread_id, id) DO UPDATE SET doc = excluded.doc, ts_client_ms = excluded.ts_client_ms",
                [(t, i, d["accountId"], d["tsClientMs"], _encode(d, now, now_plain)) for (t, i), d in docs.items()],
            )
            if patches:
                conn.executemany("DELETE FROM pending_updates WHERE thread_id = ? AND message_id = ?", list(patches))
            touched = self._merge_threads(conn, [ThreadUpdate.from_message(m) for m in newest.values()], now)
        return WriteResult(messages=len(docs), applied=len(patches), threads=touched)

    def apply_receipts(self, receipts: Sequence[Receipt], now_ms: int) -> WriteResult:
        patches = []
        for r in receipts:
            patch = schema.receipt_patch(r)
            if patch is not None:
                patches.extend(((thread_id(r.account_id, r.client_jid), mid), r.account_id, patch)
                               for mid in r.message_ids)
        return self._apply_patches(patches, now_ms)

    def apply_edits(self, edits: Sequence[MessageEdit], now_ms: int) -> WriteResult:
        return self._apply_patches([((thread_id(e.account_id, e.client_jid), e.target_id), e.account_id,
                                     schema.edit_patch(e)) for e in edits], now_ms)

    def apply_revokes(self, revokes: Sequence[MessageRevoke], now_ms: int) -> WriteResult:
        return self._apply_patches([((thread_id(r.account_id, r.client_jid), r.target_id), r.account_id,
                                     schema.revoke_patch(r)) for r in revokes], now_ms)

    def _apply_patches(self, patches: list[tuple[tuple[str, str], str, dict]], now_ms: int) -> WriteResult:
        """Patch stored messages; keep patches for messages not stored yet (no ghosts)."""
        if not patches:
            return WriteResult()
        now = ms_to_dt(now_ms)
        keys = list({key: None for key, _, _ in patches})
        applied = pending = 0
        with self._write() as conn:
            docs = self._load(conn, "messages", "id", "doc", keys)
            held = self._load(conn, "pending_updates", "message_id", "patch", keys)
            owners = {}
            for key, account_id, patch in patches:
                if key in docs:
                    docs[key] = merge_message(docs[key], patch, now)
                    applied += 1
                else:
                    held[key] = schema.merge_patch(held.get(key), patch)
                    owners[key] = account_id
                    pending += 1
            conn.executemany("UPDATE messages SET doc = ? WHERE thread_id = ? AND id = ?",
                             [(_encode(d), t, i) for (t, i), d in docs.items()])
            conn.executemany(
                "INSERT INTO pending_updates (thread_id, message_id, account_id, patch) VALUES (?,?,?,?) "
                "ON CONFLICT (thread_id, message_id) DO UPDATE SET patch = excluded.patch",
                [(t, i, owners[(t, i)], _encode(p)) for (t, i), p in held.items() if (t, i) in owners],
            )
        return WriteResult(applied=applied, pending=pending)

    @staticmethod
    def _load(conn, table: str, id_column: str, doc_column: str,
              keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Documents for (thread_id, id) keys, in one query per 500 keys."""
        found: dict[tuple[str, str], dict] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = conn.execute(
                f"SELECT t.thread_id, t.{id_column}, t.{doc_column} FROM json_each(?) AS k "
                f"JOIN {table} AS t ON t.thread_id = json_extract(k.value, '$[0]') "
                f"AND t.{id_column} = json_extract(k.value, '$[1]')",
                (json.dumps(chunk),),
            )
            for tid, mid, doc in rows:
                found[(tid, mid)] = _decode(doc)
        return found

    # --- threads -----------------------------------------------------------------

    def update_threads(self, updates: Sequence[ThreadUpdate], now_ms: int) -> WriteResult:
        merged: dict[str, ThreadUpdate] = {}
        for u in updates:
            merged[u.thread_id] = merged[u.thread_id].merge(u) if u.thread_id in merged else u
        with self._write() as conn:
            touched = self._merge_threads(conn, merged.values(), ms_to_dt(now_ms))
        return WriteResult(threads=touched)

    def _merge_threads(self, conn, updates, now: datetime) -> int:
        updates = list(updates)
        if not updates:
            return 0
        rows = conn.execute("SELECT t.thread_id, t.doc FROM json_each(?) AS k JOIN threads AS t "
                            "ON t.thread_id = k.value", (json.dumps([u.thread_id for u in updates]),))
        stored = {tid: _decode(doc) for tid, doc in rows}
        writes = []
        for update in updates:
            doc = schema.merge_thread(stored.get(update.thread_id), update, now)
            if doc is not None:
                writes.append((update.thread_id, update.account_id, doc.get("lastMessageAtMs"), _encode(doc)))
        conn.executemany(
            "INSERT INTO threads (thread_id, account_id, last_message_at_ms, doc) VALUES (?,?,?,?) "
            "ON CONFLICT (thread_id) DO UPDATE SET doc = excluded.doc, "
            "last_message_at_ms = excluded.last_message_at_ms", writes)
        return len(writes)

    # --- reads -------------------------------------------------------------------

    def get_message(self, account_id: str, chat_jid: str, message_id: str) -> Optional[dict]:
        row = self._conn().execute("SELECT doc FROM messages WHERE thread_id = ? AND id = ?",
                                   (thread_id(account_id, chat_jid), message_id)).fetchone()
        return to_api(_decode(row[0])) if row else None

    def get_thread(self, thread: str) -> Optional[dict]:
        row = self._conn().execute("SELECT doc FROM threads WHERE thread_id = ?", (thread,)).fetchone()
        return to_api(_decode(row[0])) if row else None

    def list_threads(self, account_id: str, limit: int = 50, cursor: Optional[str] = None) -> Page:
        sql = "SELECT thread_id, last_message_at_ms, doc FROM threads WHERE account_id = ? " \
              "AND last_message_at_ms IS NOT NULL"
        args: list[Any] = [account_id]
        if cursor:
            at_ms, after_id = schema.decode_cursor(cursor)
            sql += " AND (last_message_at_ms < ? OR (last_message_at_ms = ? AND thread_id < ?))"
            args += [at_ms, at_ms, after_id]
        sql += " ORDER BY last_message_at_ms DESC, thread_id DESC LIMIT ?"
        rows = self._conn().execute(sql, (*args, limit + 1)).fetchall()
        return self._page(rows, limit)

    def list_messages(self, account_id: str, thread: str, limit: int = 50, cursor: Optional[str] = None) -> Page:
        if not thread.startswith(account_id + "__"):
            return Page([], None)
        sql = "SELECT id, ts_client_ms, doc FROM messages WHERE thread_id = ?"
        args: list[Any] = [thread]
        if cursor:
            at_ms, after_id = schema.decode_cursor(cursor)
            sql += " AND (ts_client_ms < ? OR (ts_client_ms = ? AND id < ?))"
            args += [at_ms, at_ms, after_id]
        sql += " ORDER BY ts_client_ms DESC, id DESC LIMIT ?"
        rows = self._conn().execute(sql, (*args, limit + 1)).fetchall()
        return self._page(rows, limit)

    @staticmethod
    def _page(rows, limit: int) -> Page:
        items = [to_api(_decode(doc)) for _, _, doc in rows[:limit]]
        more = len(rows) > limit
        next_cursor = schema.encode_cursor(rows[limit - 1][1], rows[limit - 1][0]) if more else None
        return Page(items, next_cursor)

    # --- accounts ----------------------------------------------------------------

    def get_account(self, account_id: str) -> Optional[dict]:
        row = self._conn().execute("SELECT doc FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
        return to_api(_decode(row[0])) if row else None

    def list_accounts(self) -> list[dict]:
        rows = self._conn().execute("SELECT doc FROM accounts ORDER BY account_id").fetchall()
        return [to_api(_decode(doc)) for (doc,) in rows]

    def merge_account(self, account_id: str, fields: dict[str, Any], now_ms: int,
                      fence: Optional[Fence] = None) -> None:
        now = ms_to_dt(now_ms)
        with self._write() as conn:
            if fence is not None:
                self._check_fence(conn, account_id, fence)
            doc = self._account_doc(conn, account_id)
            for key, value in fields.items():
                if isinstance(value, Increment):
                    doc[key] = (doc.get(key) or 0) + value.by
                elif isinstance(value, ServerTime):
                    doc[key] = now
                else:
                    doc[key] = value
            doc["accountId"] = account_id
            doc["updatedAt"] = now
            self._put_account(conn, account_id, doc)

    def delete_account(self, account_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM accounts WHERE account_id = ?", (account_id,)).rowcount > 0

    @staticmethod
    def _account_doc(conn, account_id: str) -> dict:
        row = conn.execute("SELECT doc FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
        return _decode(row[0]) if row else {}

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

    def acquire_lease(self, account_id: str, holder: str, now_ms: int, ttl_ms: int) -> Optional[Lease]:
        with self._write() as conn:
            current = self._lease_row(conn, account_id)
            if current is None:
                epoch = 1
            elif current.holder == holder and current.expires_at_ms > 0:
                epoch = current.epoch  # still ours (even if it lapsed, nobody took it)
            elif current.live(now_ms):
                return None
            else:
                epoch = current.epoch + 1
            return self._put_lease(conn, Lease(account_id, holder, epoch, now_ms + ttl_ms, now_ms))

    def renew_lease(self, account_id: str, holder: str, epoch: int, now_ms: int, ttl_ms: int) -> Optional[Lease]:
        with self._write() as conn:
            current = self._lease_row(conn, account_id)
            if current is None or current.holder != holder or current.epoch != epoch or current.expires_at_ms == 0:
                return None
            return self._put_lease(conn, Lease(account_id, holder, epoch, now_ms + ttl_ms, now_ms))

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

    def heartbeat_instance(self, instance_id: str, now_ms: int, started_at_ms: int, version: str,
                           accounts: int) -> None:
        doc = {"instanceId": instance_id, "startedAt": ms_to_dt(started_at_ms), "heartbeatAtMs": now_ms,
               "version": version, "accounts": accounts}
        with self._write() as conn:
            conn.execute("INSERT INTO instances (instance_id, doc) VALUES (?, ?) "
                         "ON CONFLICT (instance_id) DO UPDATE SET doc = excluded.doc", (instance_id, _encode(doc)))

    def list_instances(self) -> list[dict]:
        rows = self._conn().execute("SELECT doc FROM instances ORDER BY instance_id")
        return [to_api(_decode(doc)) for (doc,) in rows]

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

    def release_job_lock(self, job: str, account_id: str, owner: str) -> bool:
        with self._write() as conn:
            gone = conn.execute("DELETE FROM job_locks WHERE job = ? AND account_id = ? AND owner = ?",
                                (job, account_id, owner)).rowcount > 0
            if gone:
                self._clear_lock_mirror(conn, job, account_id, owner)
            return gone

    def _mirror_lock(self, conn, job: str, account_id: str, lock: JobLock) -> None:
        """Mirror a job lock into the account document (SPEC §2)."""
        until, holder, acquired = schema.JOB_LOCK_MIRROR[job]
        doc = self._account_doc(conn, account_id)
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

    @staticmethod
    def _put_account(conn, account_id: str, doc: dict) -> None:
        conn.execute("INSERT INTO accounts (account_id, doc) VALUES (?, ?) "
                     "ON CONFLICT (account_id) DO UPDATE SET doc = excluded.doc", (account_id, _encode(doc)))

    # --- outbox ------------------------------------------------------------------

    def enqueue_outbox(self, item: OutboxItem) -> OutboxItem:
        with self._write() as conn:
            row = conn.execute("SELECT doc FROM outbox WHERE id = ?", (item.id,)).fetchone()
            if row:
                return schema.outbox_item(_decode(row[0]))
            conn.execute("INSERT INTO outbox (id, account_id, status, created_at_ms, doc) VALUES (?,?,?,?,?)",
                         (item.id, item.account_id, item.status, item.created_at_ms, _encode(schema.outbox_doc(item))))
            return item

    def get_outbox(self, item_id: str) -> Optional[OutboxItem]:
        row = self._conn().execute("SELECT doc FROM outbox WHERE id = ?", (item_id,)).fetchone()
        return schema.outbox_item(_decode(row[0])) if row else None

    def claim_outbox(self, account_id: str, fence: Fence, now_ms: int, limit: int = 10) -> list[OutboxItem]:
        with self._write() as conn:
            self._check_fence(conn, account_id, fence)
            rows = conn.execute("SELECT doc FROM outbox WHERE account_id = ? AND status = 'queued' "
                                "ORDER BY created_at_ms, id LIMIT ?", (account_id, limit)).fetchall()
            claimed = []
            for (doc,) in rows:
                item = schema.outbox_item(_decode(doc))
                item = OutboxItem(**{**item.__dict__, "status": "sending", "attempts": item.attempts + 1,
                                     "claimed_by": fence.holder, "claim_epoch": fence.epoch})
                self._put_outbox(conn, item, now_ms)
                claimed.append(item)
            return claimed

    def complete_outbox(self, item_id: str, fence: Fence, wa_message_id: str, now_ms: int) -> None:
        self._finish_outbox(item_id, fence, now_ms, status="sent", wa_message_id=wa_message_id)

    def fail_outbox(self, item_id: str, fence: Fence, reason: str, now_ms: int) -> None:
        self._finish_outbox(item_id, fence, now_ms, status="failed", error=reason)

    def _finish_outbox(self, item_id: str, fence: Fence, now_ms: int, **changes) -> None:
        with self._write() as conn:
            row = conn.execute("SELECT doc FROM outbox WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise StoreError(f"outbox item {item_id} does not exist")
            item = schema.outbox_item(_decode(row[0]))
            self._check_fence(conn, item.account_id, fence)
            if item.claim_epoch != fence.epoch or item.claimed_by != fence.holder:
                raise StaleFence(f"outbox item {item_id} was claimed by {item.claimed_by}/{item.claim_epoch}, "
                                 f"not {fence.holder}/{fence.epoch}")
            self._put_outbox(conn, OutboxItem(**{**item.__dict__, **changes}), now_ms)

    @staticmethod
    def _put_outbox(conn, item: OutboxItem, now_ms: int) -> None:
        doc = schema.outbox_doc(item)
        doc["updatedAt"] = ms_to_dt(now_ms)
        conn.execute("UPDATE outbox SET status = ?, doc = ? WHERE id = ?", (item.status, _encode(doc), item.id))
