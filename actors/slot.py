"""SessionSlot: where an account's session lives, reachable from two threads."""
from __future__ import annotations

import threading


class SlotClosed(RuntimeError):
    pass


class SessionSlot:
    """Where an account's session lives, reachable from the supervisor's thread too: an
    actor stuck in a handler cannot stop its own session, so the supervisor kills the
    slot (stops the session, refuses new ones) before it starts a replacement."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session = None
        self.killed = False

    def put(self, session) -> None:
        with self._lock:
            if self.killed:
                raise SlotClosed("this account actor was replaced")
            self._session = session

    def current(self):
        with self._lock:
            return self._session

    def take(self):
        with self._lock:
            session, self._session = self._session, None
            return session

    def kill(self) -> None:
        with self._lock:
            self.killed = True
            session, self._session = self._session, None
        if session is not None:
            session.stop()
