"""The durable ingest journal behind every account's Inbox (SQLite, WAL).

A transport callback appends the raw event bytes and returns: that append is the
acknowledgement point, so WhatsApp may forget the event. Rows leave the spool only once
the store has confirmed what they became (`done`), or, if they cannot be written, into
the quarantine table with the reason (`quarantine`): nothing is dropped silently.
On start, rows left behind are replayed before new events (they come first in `seq`).

Every write goes through `_tx`, which rolls back on any error: a failed `done()` must
never leave the shared connection inside an open transaction, or the appends after it
(the ack point!) would join a transaction nobody commits. Readers borrow a connection
from a small pool, so threads that come and go (replaced actors) leave none behind.

One spool per process: each instance has its own file, `spool_path(data_dir, id)` =
`{WASYNC_DATA_DIR}/spool/{INSTANCE_ID}.db`, locked while the process lives (a second
process with the same INSTANCE_ID and data dir is refused). The spool of a process that
died, on this host, is adopted by a live one (`adopt_orphans`): its rows move over,
keeping where they came from, and are replayed like any other. Copying a dead host's
spool file into that folder (under a temporary name, then renamed to `*.db`) recovers
it by hand.

Durability: WAL with synchronous=NORMAL survives a crash of the process (SIGKILL), not
a power cut of the machine in the last moments before a checkpoint.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from wasync.runtime.checkpointer import WalCheckpointer
from wasync.runtime.clock import Clock
from wasync.runtime.sqlite_steps import rows_at_once

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account_id TEXT NOT NULL, kind TEXT NOT NULL,
    raw BLOB NOT NULL, received_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_account ON events (account_id, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY, account_id TEXT NOT NULL, kind TEXT NOT NULL, raw BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL, reason TEXT NOT NULL, quarantined_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# An account's next rows (one page), read in one step (runtime/sqlite_steps.py).
_NEXT_ROWS = ("SELECT seq, kind, raw, received_at_ms, origin FROM events "
              "WHERE account_id = ? AND seq > ? ORDER BY seq LIMIT ?")
# The same with a byte budget: sizes first (length() of a blob reads no blob), then only
# the rows that fit.
_NEXT_ROWS_UP_TO = (
    "SELECT e.seq, e.kind, e.raw, e.received_at_ms, e.origin FROM ("
    " SELECT seq, SUM(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - size AS before FROM ("
    "  SELECT seq, length(raw) AS size FROM events WHERE account_id = ? AND seq > ? ORDER BY seq LIMIT ?)"
    ") AS page JOIN events AS e ON e.seq = page.seq WHERE page.before < ? ORDER BY e.seq")
# Raw bytes ride in the page only up to INLINE_RAW_BYTES: in hex inside JSON a row takes
# ~8x its size in memory while it is read (a history chunk is megabytes). A bigger row is
# read on its own (NULL here): few rows are that big, and each is plenty of work anyway.
INLINE_RAW_BYTES = 64 * 1024
_PAGE_COLUMNS = f"seq, kind, CASE WHEN length(raw) <= {INLINE_RAW_BYTES} THEN hex(raw) END, received_at_ms, origin"
# Reader connections at most; a read waits for a free one (it holds it for milliseconds).
# Opened per read instead, fifty accounts draining at once opened and closed dozens a
# second, each growing a page cache of up to 2 MiB in its thread's malloc arena: the
# daemon's RSS grew with the spool through a store outage (+81 MiB over 30,000 rows).
READERS = 4
SPOOL_DIR = "spool"

log = logging.getLogger("wasync.spool")


class SpoolInUse(RuntimeError):
    """Another live process holds this spool file."""


@dataclass(frozen=True)
class SpoolRow:
    seq: int
    account_id: str
    kind: str
    raw: bytes
    received_at_ms: int
    # For a row adopted from a dead process's spool: (that spool's id, its seq there).
    origin: Optional[tuple[str, int]] = None


def spool_path(data_dir: str | Path, instance_id: str) -> Path:
    """`{data_dir}/spool/{instance_id}.db` (the id made safe for a file name)."""
    return Path(data_dir) / SPOOL_DIR / (re.sub(r"[^A-Za-z0-9._-]", "_", instance_id) + ".db")


ADOPTING = "adopting"  # in a lock file: held by a process moving that spool's rows over
ADOPTION_WAIT_S = 60.0  # how long a process waits for its own spool while another adopts it


def _lock(path: Path, purpose: str = "running"):
    """Hold `path`'s lock file for as long as the returned file is open; None if taken.
    The lock file is never removed: a process that opened it just before the removal
    would lock a file nobody else sees, and two processes would hold one spool."""
    handle = open(path.with_name(path.name + ".lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {purpose}\n")
    handle.flush()
    return handle


def _lock_own(path: Path, wait_s: float):
    """The lock of this process's own spool. A process restarted under the same
    INSTANCE_ID may find another one on the host adopting its old spool: it waits for
    that (seconds), rather than be refused."""
    deadline = time.monotonic() + wait_s
    while True:
        handle = _lock(path)
        if handle is not None:
            return handle
        holder = path.with_name(path.name + ".lock").read_text().strip() or "?"
        if ADOPTING not in holder or time.monotonic() >= deadline:
            raise SpoolInUse(f"{path} is in use by another wasync process (pid {holder.split()[0]}): give every "
                             "process its own INSTANCE_ID, or its own WASYNC_DATA_DIR")
        time.sleep(0.1)


class Spool:
    def __init__(self, path: str | Path, clock: Optional[Clock] = None, *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_own(self.path, ADOPTION_WAIT_S)
        self.clock = clock or Clock()
        self._busy_timeout_s = busy_timeout_s
        # One writing connection behind a lock: appends come from many transport threads
        # and each is one tiny transaction.
        self._writer = self._connect()
        # Checkpoints run on their own thread, never inside an append (runtime/checkpointer.py).
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        self._write_lock = threading.Lock()
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._readers = threading.BoundedSemaphore(READERS)
        self._closed = False
        self._writer.executescript(_SCHEMA)
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('id', ?)", (uuid.uuid4().hex,))
            if "origin" not in {c[1] for c in conn.execute("PRAGMA table_info(events)")}:
                conn.execute("ALTER TABLE events ADD COLUMN origin TEXT")  # spools written before adoption
        with self._reading() as conn:
            # Which journal a row came from: seqs are only comparable within one spool
            # file, so replay-safe counters remember the last seq they counted per spool.
            self.id: str = conn.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0]
        self._checkpointer = WalCheckpointer(self.path, name="spool-checkpoint",
                                             busy_timeout_s=busy_timeout_s).start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self._busy_timeout_s)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """The one way to write: BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error."""
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
                self._writer.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back by itself (disk full): never hide the cause.
                if self._writer.in_transaction:
                    try:
                        self._writer.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """One of the READERS connections (never nest: a thread holding one may not wait for another)."""
        with self._readers:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                yield conn
            finally:
                if self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)

    def append(self, account_id: str, kind: str, raw: bytes) -> int:
        """Make one raw event durable; returns its sequence number. The ack point."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO events (account_id, kind, raw, received_at_ms) VALUES (?, ?, ?, ?)",
                (account_id, kind, raw, self.clock.wall_ms()))
            return cur.lastrowid

    def pending(self, account_id: str, after_seq: int = 0, limit: int = 500,
                max_bytes: Optional[int] = None) -> list[SpoolRow]:
        """The account's next rows in order: at most `limit`, and with `max_bytes`, no row
        that starts past that much raw data (the first row always comes)."""
        with self._reading() as conn:
            if max_bytes is None:
                page = rows_at_once(conn, _PAGE_COLUMNS, _NEXT_ROWS, (account_id, after_seq, limit))
            else:
                page = rows_at_once(conn, _PAGE_COLUMNS, _NEXT_ROWS_UP_TO, (account_id, after_seq, limit, max_bytes))
            page.sort()  # by seq (first): an aggregate promises no order
            rows = [SpoolRow(seq, account_id, kind, bytes.fromhex(raw) if raw is not None else _big_raw(conn, seq),
                             received_at_ms, _origin(origin))
                    for seq, kind, raw, received_at_ms, origin in page]
        return [row for row in rows if row.raw is not None]  # a big row gone meanwhile: done (another reader's)

    def done(self, seqs: Iterable[int]) -> None:
        done = list(seqs)
        if not done:
            return
        with self._tx() as conn:  # one statement: the interpreter lock is let go once, not per row
            conn.execute("DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(done),))

    def quarantine(self, seqs: Iterable[int], reason: str) -> None:
        """Keep events that cannot be written, with why, out of the ingest path."""
        rows = [(reason, self.clock.wall_ms(), s) for s in seqs]
        if not rows:
            return
        with self._tx() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO quarantine SELECT seq, account_id, kind, raw, received_at_ms, ?, ? "
                "FROM events WHERE seq = ?", rows)
            conn.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for _, _, seq in rows])

    def quarantined(self, account_id: Optional[str] = None) -> list[tuple[int, str, str]]:
        sql = "SELECT seq, kind, reason FROM quarantine"
        args: tuple = ()
        if account_id:
            sql, args = sql + " WHERE account_id = ?", (account_id,)
        with self._reading() as conn:
            return conn.execute(sql + " ORDER BY seq", args).fetchall()

    def last_seq(self) -> int:
        """The last sequence number ever given out (rows done since included)."""
        with self._reading() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return row[0] if row else 0

    def depth(self) -> int:
        with self._reading() as conn:
            return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def oldest_received_ms(self) -> Optional[int]:
        with self._reading() as conn:
            return conn.execute("SELECT MIN(received_at_ms) FROM events").fetchone()[0]

    def accounts_with_pending(self) -> list[str]:
        with self._reading() as conn:
            return [a for (a,) in conn.execute("SELECT DISTINCT account_id FROM events")]

    def adopt(self, orphan: Path) -> int:
        """Move every row of a dead process's spool file into this one (keeping where each
        came from, so a history chunk is still counted once) and remove that file; one
        with quarantined rows is kept, renamed, for whoever looks into them. Returns the
        rows moved; 0 if the file belongs to a live process."""
        handle = _lock(orphan, ADOPTING)
        if handle is None:
            return 0
        try:
            source = sqlite3.connect(orphan, isolation_level=None)
            try:
                tables = {name for (name,) in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "events" not in tables:
                    rows, quarantined, their_id = [], 0, "unknown"
                else:
                    their_id = (source.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()
                                if "meta" in tables else None) or (f"legacy-{orphan.name}",)
                    their_id = their_id[0]
                    has_origin = "origin" in {c[1] for c in source.execute("PRAGMA table_info(events)")}
                    rows = source.execute(
                        f"SELECT seq, account_id, kind, raw, received_at_ms{', origin' if has_origin else ''} "
                        "FROM events ORDER BY seq").fetchall()
                    quarantined = source.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] \
                        if "quarantine" in tables else 0
            finally:
                source.close()
            moved = []
            for row in rows:
                seq, account_id, kind, raw, received_at_ms = row[:5]
                origin = row[5] if len(row) > 5 and row[5] else f"{their_id}:{seq}"  # adopted twice: first origin
                moved.append((account_id, kind, raw, received_at_ms, origin))
            with self._tx() as conn:
                conn.executemany(
                    "INSERT INTO events (account_id, kind, raw, received_at_ms, origin) VALUES (?, ?, ?, ?, ?)", moved)
            for suffix in ("-wal", "-shm"):
                orphan.with_name(orphan.name + suffix).unlink(missing_ok=True)
            if quarantined:
                orphan.rename(orphan.with_name(f"{orphan.name}.adopted-{int(time.time())}"))
            else:
                orphan.unlink(missing_ok=True)
            log.warning("[realtime] adopted %d events from %s (a process that is gone)%s", len(rows), orphan,
                        f"; its {quarantined} quarantined events stay in the renamed file" if quarantined else "")
            return len(rows)
        finally:
            handle.close()

    def orphans(self, include_legacy: bool = False) -> list[Path]:
        """Other spool files next to this one (and, with `include_legacy`, the
        `{data_dir}/spool.db` of versions before one spool per process): those no live
        process holds are for `adopt`."""
        candidates = [p for p in self.path.parent.glob("*.db") if p != self.path]
        legacy = self.path.parent.parent / "spool.db"
        if include_legacy and legacy.exists() and legacy != self.path:
            candidates.append(legacy)
        return sorted(candidates)

    def adopt_orphans(self, include_legacy: bool = False) -> int:
        """`adopt` every orphan; returns the rows moved. A file that is not a spool (not
        SQLite, another schema) is renamed aside with an error, so it is neither retried
        forever nor lost; any other failure is logged and retried next time.

        The legacy file is adopted at start only: a process of an older version (which
        takes no lock) may still be running on it until it is stopped; stop it first."""
        moved = 0
        for orphan in self.orphans(include_legacy):
            try:
                moved += self.adopt(orphan)
            except sqlite3.OperationalError:
                log.exception("[realtime] could not adopt %s now (will try again)", orphan)
            except sqlite3.DatabaseError as exc:
                aside = orphan.with_name(f"{orphan.name}.unreadable-{int(time.time())}")
                orphan.rename(aside)
                log.error("[realtime] %s is not a readable spool (%s): moved aside to %s, nothing read from it",
                          orphan, exc, aside)
            except Exception:
                log.exception("[realtime] could not adopt %s (will try again)", orphan)
        return moved

    def close(self) -> None:
        self._closed = True
        self._checkpointer.stop()
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        with self._write_lock:
            self._writer.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _big_raw(conn: sqlite3.Connection, seq: int) -> Optional[bytes]:
    """The raw bytes of a row too big to ride in its page (INLINE_RAW_BYTES); None if it is
    gone since (done: another reader's rows, written meanwhile)."""
    found = conn.execute("SELECT raw FROM events WHERE seq = ?", (seq,)).fetchone()
    return found[0] if found else None


def _origin(value: Optional[str]) -> Optional[tuple[str, int]]:
    if not value:
        return None
    spool_id, _, seq = value.rpartition(":")
    return spool_id, int(seq)
