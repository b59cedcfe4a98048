"""WalCheckpointer: copies a SQLite file's write-ahead log back into it on a thread of its own.

With the default auto-checkpoint, the commit that fills the WAL past 1,000 pages copies it
back itself, fsync included, while holding the write lock. In the spool that commit is an
append on the transport's thread: during a history sync (megabytes of raw events) appends
took up to 250 ms and every account's events waited behind them. The writing connections
set `wal_autocheckpoint=0`; this thread checkpoints once a second, PASSIVE (it never waits
for readers or writers), and TRUNCATE once at the end.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("wasync.sqlite")


class WalCheckpointer:
    def __init__(self, path: str | Path, *, name: str, busy_timeout_s: float, every_s: float = 1.0):
        self.path, self.busy_timeout_s, self.every_s = Path(path), busy_timeout_s, every_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> "WalCheckpointer":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """The last checkpoint (TRUNCATE), then the thread ends."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        try:
            while not self._stopping.wait(self.every_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("sqlite checkpoint of %s failed: %s", self.path, exc)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("sqlite final checkpoint of %s failed: %s", self.path, exc)
        finally:
            conn.close()
