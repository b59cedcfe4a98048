"""`wasync run` on the real (neonize) transport: Go reads its environment only at process
start, so the daemon re-executes itself once with NEONIZE_BOT_TAG=off when it is missing."""
from __future__ import annotations

import os

from daemonproc import DaemonProcess


def starting_environment(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return dict(entry.decode().partition("=")[::2] for entry in handle.read().split(b"\0") if b"=" in entry)


def test_run_puts_the_bot_tag_off_into_its_starting_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("NEONIZE_BOT_TAG", raising=False)
    daemon = DaemonProcess(tmp_path, {})
    daemon.env.pop("NEONIZE_BOT_TAG", None)
    daemon.start()
    try:
        env = starting_environment(daemon.proc.pid)  # execv keeps the pid
        assert env.get("NEONIZE_BOT_TAG") == "off"
        assert env.get("WASYNC_REEXECED") == "1"
    finally:
        assert daemon.stop() == 0


def test_an_operator_setting_is_kept_and_no_reexec_happens(tmp_path):
    daemon = DaemonProcess(tmp_path, {"NEONIZE_BOT_TAG": "off"}).start()
    try:
        env = starting_environment(daemon.proc.pid)
        assert env.get("NEONIZE_BOT_TAG") == "off" and "WASYNC_REEXECED" not in env
    finally:
        assert daemon.stop() == 0
    assert os.environ.get("WASYNC_REEXECED") is None
