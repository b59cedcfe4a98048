"""The durable ingest journal behind every account's Inbox (SQLite, WAL).

A transport callback appends the raw event bytes and returns: that append is the
acknowledgement point, so WhatsApp may forget the event. Rows leave the spool only once
the store has confirmed what they became (`done`), or, if they cannot be understood,
into the quarantine table with the reason (`quarantine`): nothing is dropped silently.
On start, rows left behind are replayed before new events (they come first in `seq`).

Durability: WAL with synchronous=NORMAL survives a crash of the process (SIGKILL), not
a power cut of the machine in the last moments before a checkpoint.
"""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from wasync.runtime.clock import Clock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, account_id TEXT NOT NULL, kind TEXT NOT NULL,
    raw BLOB NOT NULL, received_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_account ON events (account_id, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY, account_id TEXT NOT NULL, kind TEXT NOT NULL, raw BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL, reason TEXT NOT NULL, quarantined_at_ms INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class SpoolRow:
    seq: int
    account_id: str
    kind: str
    raw: bytes
    received_at_ms: int


class Spool:
    def __init__(self, path: str | Path, clock: Optional[Clock] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock or Clock()
        # One writing connection behind a lock: appends come from many transport threads
        # and each is one tiny transaction; readers use their own connections.
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        self._write_lock = threading.Lock()
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def append(self, account_id: str, kind: str, raw: bytes) -> int:
        """Make one raw event durable; returns its sequence number. The ack point."""
        with self._write_lock:
            cur = self._writer.execute(
                "INSERT INTO events (account_id, kind, raw, received_at_ms) VALUES (?, ?, ?, ?)",
                (account_id, kind, raw, self.clock.wall_ms()))
            return cur.lastrowid

    def pending(self, account_id: str, after_seq: int = 0, limit: int = 500) -> list[SpoolRow]:
        rows = self._reader().execute(
            "SELECT seq, account_id, kind, raw, received_at_ms FROM events "
            "WHERE account_id = ? AND seq > ? ORDER BY seq LIMIT ?", (account_id, after_seq, limit)).fetchall()
        return [SpoolRow(*row) for row in rows]

    def done(self, seqs: Iterable[int]) -> None:
        seqs = [(s,) for s in seqs]
        if not seqs:
            return
        with self._write_lock:
            self._writer.execute("BEGIN")
            self._writer.executemany("DELETE FROM events WHERE seq = ?", seqs)
            self._writer.execute("COMMIT")

    def quarantine(self, seq: int, reason: str) -> None:
        """Keep an event nobody can understand, with why, out of the ingest path."""
        with self._write_lock:
            self._writer.execute("BEGIN")
            self._writer.execute(
                "INSERT OR REPLACE INTO quarantine SELECT seq, account_id, kind, raw, received_at_ms, ?, ? "
                "FROM events WHERE seq = ?", (reason, self.clock.wall_ms(), seq))
            self._writer.execute("DELETE FROM events WHERE seq = ?", (seq,))
            self._writer.execute("COMMIT")

    def quarantined(self, account_id: Optional[str] = None) -> list[tuple[int, str, str]]:
        sql = "SELECT seq, kind, reason FROM quarantine"
        args: tuple = ()
        if account_id:
            sql, args = sql + " WHERE account_id = ?", (account_id,)
        return self._reader().execute(sql + " ORDER BY seq", args).fetchall()

    def depth(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def oldest_received_ms(self) -> Optional[int]:
        return self._reader().execute("SELECT MIN(received_at_ms) FROM events").fetchone()[0]

    def accounts_with_pending(self) -> list[str]:
        return [a for (a,) in self._reader().execute("SELECT DISTINCT account_id FROM events")]

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
