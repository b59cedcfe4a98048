"""SqliteStore: the embedded default store (one file under WASYNC_DATA_DIR).

Conversation data, reads and accounts live here; leases, locks and the outbox in
sqlite_tx.py; the JSON codec in sqlite_codec.py.

Documents are kept as JSON next to the few columns that queries sort or filter on, so
the API returns the same JSON as from Firestore. Every write is one `BEGIN IMMEDIATE`
transaction: several processes on one host can share the file (leases work across
processes), and the read-merge-write of schema.py is atomic. WAL mode lets readers run
while a writer commits. Callers are actor threads; each thread gets its own connection.
"""
from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from wasync.runtime.account import AccountPatch, AccountRecord
from wasync.runtime.backfill import RepairResult, ThreadHistory
from wasync.runtime.checkpointer import WalCheckpointer
from wasync.runtime.model import Message, MessageEdit, MessageRevoke, Receipt, ThreadUpdate, thread_id
from wasync.runtime.sqlite_steps import insert_rows, rows_at_once
from wasync.runtime.store import history, schema
from wasync.runtime.store.base import PING_TIMEOUT_S, BadData, Fence, Page, PhoneInUse, StoreError, WriteResult
from wasync.runtime.store.schema import merge_message, ms_to_dt, to_api
from wasync.runtime.store.sqlite_codec import decode, encode
from wasync.runtime.store.sqlite_tx import SqliteOwnership

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
    # The dashboard counts what waits, across accounts.
    "CREATE INDEX outbox_waiting ON outbox (status, account_id);",
)


# What SQLite says about the data itself (a constraint, a value it cannot bind): never
# worth a retry. Everything else (locked, I/O) is.
_REFUSED = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is open. SQLite may have rolled back already (disk full, I/O error):
    a second ROLLBACK would raise and hide the error that matters."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("sqlite rollback failed: %s", exc)


def _reads(fn):
    """A read's driver errors as StoreError, like every other store failure."""

    @functools.wraps(fn)
    def read(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {fn.__name__}: {exc}") from exc

    return read


def _bound(row) -> Optional[dict]:
    """A (id, ts_client_ms, direction) row as the message fields a history needs."""
    return None if row is None else {"id": row[0], "tsClientMs": row[1], "direction": row[2]}


class SqliteStore(SqliteOwnership):
    name = "sqlite"
    holds_back = False

    def __init__(self, path: str | Path, busy_timeout_ms: int = 30_000, ping_timeout_s: float = PING_TIMEOUT_S):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_ms, self._ping_timeout_s = busy_timeout_ms, ping_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._migrate()
        self._checkpointer = WalCheckpointer(self.path, name="sqlite-checkpoint",
                                             busy_timeout_s=self._busy_timeout_ms / 1000).start()

    @classmethod
    def from_settings(cls, settings) -> "SqliteStore":
        return cls(Path(settings.data_dir) / "wasync.db")

    # --- plumbing ----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_timeout_ms / 1000)
            self._wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run on the checkpointer thread, not inside a writer's commit.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _wal(self, conn: sqlite3.Connection) -> None:
        """WAL mode. Turning a new file to WAL answers "database is locked" at once, without
        the busy timeout, while another process does the same (two instances started
        together on a fresh data dir: the second exited 1): try again until the timeout."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

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
            _rollback(conn)
            if isinstance(exc, _REFUSED):
                raise BadData(f"sqlite: {exc}") from exc
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

    def ping(self) -> bool:
        """Whether a write could begin within the ping timeout. A read is no test: in WAL mode
        it succeeds while another process holds the write lock and every write waits. So a
        store whose lock another process holds longer than that reads as down, although
        writes wait for it up to the busy timeout. The file must exist (a deleted store file
        is not re-created empty here)."""
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None,
                                   timeout=self._ping_timeout_s)
        except sqlite3.Error:
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.Error:
            return False
        finally:
            conn.close()

    def flush(self) -> None:
        """Nothing is held back: local writes are cheap, so thread docs are not coalesced."""

    def close(self) -> None:
        self._checkpointer.stop()
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
        with self._write() as conn:
            return self._upsert(conn, messages, now_ms)

    def _upsert(self, conn, messages: Sequence[Message], now_ms: int) -> WriteResult:
        """upsert_messages inside the caller's transaction."""
        now = ms_to_dt(now_ms)
        keys = list({(m.thread_id, m.id): None for m in messages})
        docs = self._load(conn, "messages", "id", "doc", keys)
        # Held patches are rare (a receipt before its message): skip the lookup when there are none.
        held = conn.execute("SELECT EXISTS (SELECT 1 FROM pending_updates)").fetchone()[0]
        patches = self._load(conn, "pending_updates", "message_id", "patch", keys) if held else {}
        newest: dict[str, Message] = {}
        for m in messages:
            key = (m.thread_id, m.id)
            docs[key] = merge_message(docs.get(key), schema.message_doc(m), now)
            best = newest.get(key[0])
            if best is None or (m.ts_client_ms, m.id) > (best.ts_client_ms, best.id):
                newest[key[0]] = m
        for key, patch in patches.items():
            docs[key] = merge_message(docs[key], patch, now)
        insert_rows(conn, "INSERT INTO messages (thread_id, id, account_id, ts_client_ms, doc) VALUES",
                    "ON CONFLICT (thread_id, id) DO UPDATE SET doc = excluded.doc, ts_client_ms = excluded.ts_client_ms",
                    [(t, i, d["accountId"], d["tsClientMs"], encode(d)) for (t, i), d in docs.items()])
        if patches:
            conn.executemany("DELETE FROM pending_updates WHERE thread_id = ? AND message_id = ?", list(patches))
        touched = self._merge_threads(conn, [ThreadUpdate.from_message(m) for m in newest.values()], now)
        return WriteResult(messages=len(docs), applied=len(patches), threads=touched)

    def _drop_message(self, conn, tid: str, message_id: str, now_ms: int) -> None:
        """Remove one message document and make its thread describe its newest message."""
        conn.execute("DELETE FROM messages WHERE thread_id = ? AND id = ?", (tid, message_id))
        row = conn.execute("SELECT doc FROM threads WHERE thread_id = ?", (tid,)).fetchone()
        newest = conn.execute("SELECT id, doc FROM messages WHERE thread_id = ? "
                              "ORDER BY ts_client_ms DESC, id DESC LIMIT 1", (tid,)).fetchone()
        if row is None or newest is None:
            return
        fixes, _ = history.plan_repair([(tid, decode(row[0]))], {tid: {**decode(newest[1]), "id": newest[0]}})
        if tid in fixes:
            doc = {**decode(row[0]), **fixes[tid], "updatedAt": ms_to_dt(now_ms)}
            conn.execute("UPDATE threads SET doc = ?, last_message_at_ms = ? WHERE thread_id = ?",
                         (encode(doc), doc["lastMessageAtMs"], tid))

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
                             [(encode(d), t, i) for (t, i), d in docs.items()])
            conn.executemany(
                "INSERT INTO pending_updates (thread_id, message_id, account_id, patch) VALUES (?,?,?,?) "
                "ON CONFLICT (thread_id, message_id) DO UPDATE SET patch = excluded.patch",
                [(t, i, owners[(t, i)], encode(p)) for (t, i), p in held.items() if (t, i) in owners],
            )
        return WriteResult(applied=applied, pending=pending)

    @staticmethod
    def _load(conn, table: str, id_column: str, doc_column: str,
              keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Documents for (thread_id, id) keys, in one query per 500 keys."""
        found: dict[tuple[str, str], dict] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = rows_at_once(
                conn, "thread_id, key, doc",
                f"SELECT t.thread_id, t.{id_column} AS key, t.{doc_column} AS doc FROM json_each(?) AS k "
                f"JOIN {table} AS t ON t.thread_id = json_extract(k.value, '$[0]') "
                f"AND t.{id_column} = json_extract(k.value, '$[1]')",
                (json.dumps(chunk),),
            )
            for tid, mid, doc in rows:
                found[(tid, mid)] = decode(doc)
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
        rows = rows_at_once(conn, "thread_id, doc", "SELECT t.thread_id, t.doc FROM json_each(?) AS k "
                            "JOIN threads AS t ON t.thread_id = k.value", (json.dumps([u.thread_id for u in updates]),))
        stored = {tid: decode(doc) for tid, doc in rows}
        writes = []
        for update in updates:
            doc = schema.merge_thread(stored.get(update.thread_id), update, now)
            if doc is not None:
                writes.append((update.thread_id, update.account_id, doc.get("lastMessageAtMs"), encode(doc)))
        insert_rows(conn, "INSERT INTO threads (thread_id, account_id, last_message_at_ms, doc) VALUES",
                    "ON CONFLICT (thread_id) DO UPDATE SET doc = excluded.doc, "
                    "last_message_at_ms = excluded.last_message_at_ms", writes)
        return len(writes)

    # --- reads -------------------------------------------------------------------

    @_reads
    def get_message(self, account_id: str, chat_jid: str, message_id: str) -> Optional[dict]:
        row = self._conn().execute("SELECT doc FROM messages WHERE thread_id = ? AND id = ?",
                                   (thread_id(account_id, chat_jid), message_id)).fetchone()
        return to_api(decode(row[0])) if row else None

    @_reads
    def get_thread(self, thread: str) -> Optional[dict]:
        row = self._conn().execute("SELECT doc FROM threads WHERE thread_id = ?", (thread,)).fetchone()
        return to_api(decode(row[0])) if row else None

    @_reads
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

    @_reads
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
        items = [to_api(decode(doc)) for _, _, doc in rows[:limit]]
        more = len(rows) > limit
        next_cursor = schema.encode_cursor(rows[limit - 1][1], rows[limit - 1][0]) if more else None
        return Page(items, next_cursor)

    # --- backfill: thread histories and repair -------------------------------------

    _ACCOUNT_THREADS = ("SELECT thread_id, doc FROM threads WHERE account_id = ?{since} "
                        "ORDER BY last_message_at_ms DESC, thread_id DESC LIMIT ?")  # NULLs sort last
    _BOUND = ("SELECT id, ts_client_ms, json_extract(doc, '$.direction') FROM messages WHERE thread_id = ? "
              "ORDER BY ts_client_ms {0}, id {0} LIMIT 1")

    @_reads
    def thread_history(self, account_id: str, chat_jid: str) -> Optional[ThreadHistory]:
        conn, thread = self._conn(), thread_id(account_id, chat_jid)
        row = conn.execute("SELECT doc FROM threads WHERE thread_id = ?", (thread,)).fetchone()
        return self._history(conn, account_id, thread, decode(row[0]) if row else None)

    @_reads
    def list_thread_histories(self, account_id: str, limit: int,
                              active_since_ms: Optional[int] = None) -> list[ThreadHistory]:
        conn, limit = self._conn(), max(limit, 0)  # a negative LIMIT means none to SQLite
        if active_since_ms is None:
            rows = conn.execute(self._ACCOUNT_THREADS.format(since=""), (account_id, limit))
        else:
            rows = conn.execute(self._ACCOUNT_THREADS.format(since=" AND last_message_at_ms >= ?"),
                                (account_id, active_since_ms, limit))
        return [self._history(conn, account_id, tid, decode(doc)) for tid, doc in rows.fetchall()]

    def _history(self, conn, account_id: str, thread: str, doc: Optional[dict]) -> Optional[ThreadHistory]:
        oldest, newest = (conn.execute(self._BOUND.format(order), (thread,)).fetchone() for order in ("ASC", "DESC"))
        stored = conn.execute("SELECT count(*) FROM messages WHERE thread_id = ?", (thread,)).fetchone()[0]
        return history.thread_history(account_id, history.chat_of(account_id, thread), doc, _bound(oldest),
                                      _bound(newest), stored)

    def repair_threads(self, account_id: str, limit: int, now_ms: int) -> RepairResult:
        now = ms_to_dt(now_ms)
        with self._write() as conn:
            threads = [(tid, decode(doc)) for tid, doc in
                       conn.execute(self._ACCOUNT_THREADS.format(since=""), (account_id, max(limit, 0))).fetchall()]
            newest = {}
            for tid, _ in threads:
                row = conn.execute("SELECT id, doc FROM messages WHERE thread_id = ? "
                                   "ORDER BY ts_client_ms DESC, id DESC LIMIT 1", (tid,)).fetchone()
                if row is not None:
                    newest[tid] = {**decode(row[1]), "id": row[0]}
            fixes, missing = history.plan_repair(threads, newest)
            docs = dict(threads)
            for tid, fields in fixes.items():
                doc = {**docs[tid], **fields, "updatedAt": now}
                conn.execute("UPDATE threads SET doc = ?, last_message_at_ms = ? WHERE thread_id = ?",
                             (encode(doc), doc["lastMessageAtMs"], tid))
        return RepairResult(checked=len(threads), fixed=len(fixes), missing=missing)

    # --- accounts ----------------------------------------------------------------

    @_reads
    def get_account(self, account_id: str) -> Optional[dict]:
        row = self._conn().execute("SELECT doc FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
        return to_api(decode(row[0])) if row else None

    @_reads
    def list_accounts(self) -> list[dict]:
        rows = self._conn().execute("SELECT doc FROM accounts ORDER BY account_id").fetchall()
        return [to_api(decode(doc)) for (doc,) in rows]

    def list_account_records(self) -> list[AccountRecord]:
        return [schema.account_record(doc) for doc in self.list_accounts()]

    def create_account(self, account_id: str, phone: Optional[str], now_ms: int) -> bool:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE account_id = ?", (account_id,)).fetchone():
                return False
            if phone is not None:
                holder = conn.execute("SELECT account_id FROM accounts WHERE json_extract(doc, '$.phone') = ? "
                                      "LIMIT 1", (phone,)).fetchone()
                if holder:
                    raise PhoneInUse(phone, holder[0])
            self._put_account(conn, account_id, schema.new_account_doc(account_id, phone, ms_to_dt(now_ms)))
            return True

    def update_account(self, account_id: str, patch: AccountPatch, now_ms: int,
                       fence: Optional[Fence] = None) -> bool:
        with self._write() as conn:
            if fence is not None:
                self._check_fence(conn, account_id, fence)
            row = conn.execute("SELECT doc FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
            if row is None:
                return False
            doc = decode(row[0])
            doc.update(schema.account_fields(patch, doc))
            doc["updatedAt"] = ms_to_dt(now_ms)
            self._put_account(conn, account_id, doc)
            return True

    def delete_account(self, account_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM accounts WHERE account_id = ?", (account_id,)).rowcount > 0

    @staticmethod
    def _account_doc(conn, account_id: str) -> dict:
        row = conn.execute("SELECT doc FROM accounts WHERE account_id = ?", (account_id,)).fetchone()
        return decode(row[0]) if row else {}

    @staticmethod
    def _put_account(conn, account_id: str, doc: dict) -> None:
        conn.execute("INSERT INTO accounts (account_id, doc) VALUES (?, ?) "
                     "ON CONFLICT (account_id) DO UPDATE SET doc = excluded.doc", (account_id, encode(doc)))
