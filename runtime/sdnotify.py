"""Telling systemd how the daemon is doing: sd_notify(3) without libsystemd.

The protocol is one datagram of newline-separated `KEY=VALUE` lines (`READY=1`,
`STATUS=…`, `STOPPING=1`, `WATCHDOG=1`) sent to the AF_UNIX socket named by
NOTIFY_SOCKET; a leading '@' names a socket in the abstract namespace. Without
NOTIFY_SOCKET (not started by systemd with Type=notify) every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Optional

from wasync.runtime.config import Settings

log = logging.getLogger("wasync.sdnotify")


def socket_address(notify_socket: Optional[str]) -> Optional[str]:
    """The address to send to, or None when there is none we can use."""
    if not notify_socket:
        return None
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    if notify_socket.startswith("/"):
        return notify_socket
    log.warning("[supervisor] NOTIFY_SOCKET=%r is neither a path nor '@name': not notifying systemd", notify_socket)
    return None


class Notifier:
    def __init__(self, notify_socket: Optional[str], watchdog_usec: Optional[int] = None,
                 watchdog_pid: Optional[int] = None, pid: Optional[int] = None):
        self.address = socket_address(notify_socket)
        # sd_watchdog_enabled(3): WATCHDOG_PID, when set, names the one process that pings.
        for_us = watchdog_pid is None or watchdog_pid == (pid if pid is not None else os.getpid())
        self.watchdog_s = watchdog_usec / 1e6 if self.address and watchdog_usec and for_us else None
        self._failing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "Notifier":
        return cls(settings.notify_socket, settings.watchdog_usec, settings.watchdog_pid)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send the lines as one message; False when not sent (no socket, or it failed).
        Never raises: systemd being away must not stop the daemon."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failing:  # once per streak of failures, not every ping
                log.warning("[supervisor] cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
            self._failing = True
            return False
        self._failing = False
        return True
