"""Re-pair alerts: tell an operator, once per incident, that an account must be re-paired.

An incident opens on the first `raise_alert` for an account and stays open until `clear`
(the account recovered); raises in between are no-ops so a flapping actor cannot spam the
operator. Each new incident logs one `[supervisor]` line and, when a webhook is configured,
is POSTed as JSON by a single background thread. Callers (actors) only ever enqueue: a slow
or dead receiver must never stall the code that keeps accounts connected.
"""
from __future__ import annotations

import json
import logging
import queue
import random
import threading
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Optional

from wasync.runtime.backoff import Backoff
from wasync.runtime.clock import Clock

log = logging.getLogger("wasync.alerts")

# The receiver may be briefly unable to take the payload (timeout / rate limit): retry
# those. Any other 4xx means it will never accept this body, so retrying is pointless.
_RETRYABLE_4XX = {408, 429}
_STOP = object()


def _iso_utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class _Permanent(Exception):
    """The receiver refused the payload for good (non-retryable 4xx)."""


class Alerts:
    def __init__(self, instance_id: str, webhook_url: Optional[str], *, clock: Clock,
                 retry: Backoff = Backoff(initial_ms=1_000, max_ms=300_000), max_attempts: Optional[int] = None,
                 http_timeout_s: float = 10) -> None:
        self._instance_id = instance_id
        self._url = webhook_url or None
        self._clock = clock
        self._retry = retry
        self._max_attempts = max_attempts
        self._http_timeout_s = http_timeout_s
        self._lock = threading.Lock()
        self._open: dict[str, dict] = {}
        self._stats = {"delivered": 0, "failed_attempts": 0, "given_up": 0}
        self._queue: queue.Queue = queue.Queue()
        # Set by close(): interrupts backoff sleeps so shutdown is not held by a dead receiver.
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if self._url:
            self._thread = threading.Thread(target=self._run, name="wasync-alerts", daemon=True)
            self._thread.start()

    # -- caller side (never blocks on the network) ------------------------------------------
    def raise_alert(self, account_id: str, reason: str, status: str, since_ms: Optional[int] = None,
                    notify: bool = True) -> bool:
        """Open an incident for `account_id`; returns False if one is already open.
        `notify=False` opens it silently: an incident an earlier run already alerted."""
        with self._lock:
            if account_id in self._open:
                return False
            since = since_ms if since_ms is not None else self._clock.wall_ms()
            payload = {"accountId": account_id, "reason": reason, "since": _iso_utc(since),
                       "instanceId": self._instance_id, "status": status}
            self._open[account_id] = payload
        if not notify:
            return True
        log.warning("[supervisor] accountId=%s needs re-pair: reason=%s status=%s", account_id, reason, status)
        if self._thread is not None and not self._stop.is_set():
            self._queue.put(payload)
        return True

    def clear(self, account_id: str) -> None:
        """The account recovered: the next raise is a new incident (and a new alert). An alert
        still being retried is delivered anyway: the incident did happen."""
        with self._lock:
            self._open.pop(account_id, None)

    def open_incidents(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in self._open.items()}

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the sender; whatever it could not deliver is logged as undelivered."""
        self._stop.set()
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        # If the thread is stuck in an HTTP call, drain here; get_nowait hands each item to
        # exactly one of us, so nothing is logged twice.
        self._drain_undelivered()

    # -- sender thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is _STOP:
                break
            if not self._deliver(item):
                if self._stop.is_set():
                    self._log_undelivered(item)
        self._drain_undelivered()

    def _deliver(self, payload: dict) -> bool:
        """Retry until delivered, refused, out of attempts or stopped. True if delivered."""
        attempt = 0
        while True:
            attempt += 1
            try:
                self._post(payload)
                self._count("delivered")
                return True
            except _Permanent as exc:
                self._count("given_up")
                log.error("re-pair alert for %s refused by webhook (%s); giving up", payload["accountId"], exc)
                return True  # settled: not "undelivered because of shutdown"
            except Exception as exc:  # network errors, 5xx, 408/429: transient
                self._count("failed_attempts")
                if self._max_attempts is not None and attempt >= self._max_attempts:
                    self._count("given_up")
                    log.error("re-pair alert for %s not delivered after %d attempts (%s); giving up",
                              payload["accountId"], attempt, exc)
                    return True
                delay = self._retry.delay_s(attempt - 1, random.random())
                log.info("re-pair alert for %s failed (%s); retry %d in %.2fs",
                         payload["accountId"], exc, attempt, delay)
                if self._stop.wait(delay):
                    return False

    def _post(self, payload: dict) -> None:
        req = urllib.request.Request(self._url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._http_timeout_s) as resp:
                if not 200 <= resp.status < 300:
                    raise RuntimeError(f"HTTP {resp.status}")
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response socket
            if 400 <= exc.code < 500 and exc.code not in _RETRYABLE_4XX:
                raise _Permanent(f"HTTP {exc.code}") from None
            raise RuntimeError(f"HTTP {exc.code}") from None

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _drain_undelivered(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._log_undelivered(item)

    @staticmethod
    def _log_undelivered(payload: dict) -> None:
        log.error("re-pair alert for %s undelivered at shutdown: %s", payload["accountId"], json.dumps(payload))
