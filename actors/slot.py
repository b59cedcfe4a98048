"""SessionSlot: where an account's session lives, reachable from two threads."""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("wasync.slot")


class SlotClosed(RuntimeError):
    pass


class SessionSlot:
    """Where an account's session lives, reachable from the supervisor's thread too: an
    actor stuck in a handler cannot stop its own session, so the supervisor kills the
    slot (the session is stopped on a thread of its own: a neonize stop can take 25 s and
    the supervisor never waits) and refuses new sessions, before a replacement starts."""

    def __init__(self, account_id: str = "") -> None:
        self.account_id = account_id
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

    def release(self, session) -> None:
        """The owner stopped `session`: only now does it leave the slot, so a supervisor that
        abandons the owner mid-stop still finds it, and waits for it, before a new session."""
        with self._lock:
            if self._session is session:
                self._session = None

    def kill(self, on_stopped: Callable[[], None] = lambda: None) -> None:
        """Refuse new sessions and stop the current one on a thread of its own;
        `on_stopped` runs there once it has stopped (at once if there is none). A session
        its owner is stopping already is stopped again: both transports' stop() waits for
        the same end, so `on_stopped` never comes before the session is gone."""
        with self._lock:
            self.killed = True
            session, self._session = self._session, None
        threading.Thread(target=self._reap, args=(session, on_stopped), name=f"reap-{self.account_id}",
                         daemon=True).start()

    def _reap(self, session, on_stopped: Callable[[], None]) -> None:
        try:
            if session is not None:
                session.stop()
        except Exception:
            log.exception("[supervisor] accountId=%s session of an abandoned actor did not stop", self.account_id)
        finally:
            on_stopped()
