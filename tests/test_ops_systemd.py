"""systemd for real: the unit verifies, the env example names real settings, and a real
`wasync run` speaks sd_notify to a socket the test owns (as systemd would): READY=1 once
/ready answers 200, WATCHDOG=1 every half WATCHDOG_USEC while the supervisor and the
writer answer and not once the supervisor hangs, STOPPING=1 when SIGTERM starts the drain.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pykka
import pytest

from daemonproc import ROOT, DaemonProcess
from simproc import SimProcess, wait_for
from wasync.runtime import config
from wasync.runtime.board import Board
from wasync.runtime.clock import Clock
from wasync.runtime.daemon import DRAIN_S
from wasync.runtime.sdnotify import Notifier
from wasync.runtime.watchdog import SystemdWatchdog

UNIT = ROOT / "ops" / "systemd" / "wasync.service"
ENV_EXAMPLE = ROOT / "ops" / "systemd" / "wasync.env.example"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
WATCHDOG_USEC = 1_000_000  # the e2e daemon pings every 0.5 s
PERIOD_S = WATCHDOG_USEC / 1e6 / 2
PHONE = "15550020001"


# --- the unit file and the env example -----------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.skipif(not os.path.exists(SYSTEMD_ANALYZE), reason="systemd-analyze not installed")
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    # `verify` checks ExecStart's binary exists, and /opt/wasync is not installed here: the
    # copy runs this checkout's venv binary instead, every other line as shipped (User=wasync
    # included: verify does not look users up). verify exits 0 even for unknown keys or bad
    # values, so the test wants its output empty, not just its exit status.
    binary = Path(sys.executable).parent / "wasync"
    assert binary.exists(), binary
    text = UNIT.read_text()
    assert text.count("ExecStart=/opt/wasync/.venv/bin/wasync run\n") == 1
    copy = tmp_path / "wasync.service"
    copy.write_text(text.replace("ExecStart=/opt/wasync/.venv/bin/wasync run", f"ExecStart={binary} run"))
    verified = subprocess.run([SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), verified
    # The unit as shipped: the missing binary may be the only complaint.
    shipped = subprocess.run([SYSTEMD_ANALYZE, "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (shipped.stdout + shipped.stderr).splitlines() if line.strip()]
    assert all("/opt/wasync/.venv/bin/wasync" in line for line in complaints), complaints


def test_the_unit_says_what_the_daemon_does():
    unit = unit_settings(UNIT.read_text())
    one = {key: values[-1] for key, values in unit.items()}
    assert (one["Type"], one["NotifyAccess"], one["User"]) == ("notify", "main", "wasync")
    assert one["Restart"] == "on-failure" and one["StateDirectory"] == "wasync"
    assert "WASYNC_DATA_DIR=/var/lib/wasync" in one["Environment"].split()
    # The drain (System.stop): sessions stop within DRAIN_S, the spool flushes within DRAIN_S,
    # leases are released within 10 s; systemd must not kill the process before that.
    assert seconds(one["TimeoutStopSec"]) > 2 * DRAIN_S + 10
    assert seconds(one["WatchdogSec"]) >= 30
    assert "MemoryDenyWriteExecute" not in unit  # neonize's ctypes callbacks need W+X memory
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces",
                "LockPersonality"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict" and one["CapabilityBoundingSet"] == "" and one["UMask"] == "0077"
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one["SystemCallArchitectures"] == "native"


def test_the_env_example_names_settings_the_daemon_reads():
    known = {name for var in config.VARIABLES for name in var.names} | set(config.AUTO_BACKFILL_SWITCHES)
    from_systemd = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
    active, mentioned = {}, set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^(#?)([A-Z][A-Z0-9_]+)=(.*)$", line)
        if match:
            mentioned.add(match.group(2))
            if not match.group(1):
                active[match.group(2)] = match.group(3)
    assert mentioned - known == {config.NEONIZE_BOT_TAG}, mentioned - known
    assert active[config.NEONIZE_BOT_TAG] == "off" and active["WASYNC_DATA_DIR"] == "/var/lib/wasync"
    assert not mentioned & (from_systemd | {"WASYNC_DEBUG_FAULTS"})
    settings = config.load(active)  # what the example sets is valid as it stands
    settings.require_serving()
    assert settings.notify_socket is None and settings.watchdog_usec is None


# --- runtime/sdnotify.py -------------------------------------------------------------------


def test_systemd_variables_are_settings():
    s = config.load({"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"})
    assert (s.notify_socket, s.watchdog_usec, s.watchdog_pid) == ("@sd", 30_000_000, 42)
    with pytest.raises(config.ConfigError, match="WATCHDOG_USEC"):
        config.load({"WATCHDOG_USEC": "soon"})


def test_sdnotify_sends_one_datagram_to_an_abstract_socket():
    name = f"wasync-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        systemd.settimeout(5)
        notifier = Notifier("@" + name, watchdog_usec=2_000_000)
        assert notifier.enabled and notifier.watchdog_s == 2.0
        assert notifier.notify("READY=1", "STATUS=active: 1 accounts")
        assert systemd.recv(4096) == b"READY=1\nSTATUS=active: 1 accounts"
    assert not notifier.notify("WATCHDOG=1")  # nobody listens any more: False, no exception


def test_sdnotify_without_systemd_or_for_another_process_stays_quiet():
    silent = Notifier(None, watchdog_usec=1_000_000)
    assert not silent.enabled and silent.watchdog_s is None and silent.notify("READY=1") is False
    assert Notifier("@x", 1_000_000, watchdog_pid=os.getpid() + 1).watchdog_s is None  # WATCHDOG_PID: not us
    assert Notifier("@x", 1_000_000, watchdog_pid=os.getpid()).watchdog_s == 1.0
    assert Notifier("@x", None).watchdog_s is None
    assert not Notifier("vsock:2:999").enabled  # not a path nor '@name': not used


# --- runtime/watchdog.py with stand-in actors -----------------------------------------------


class Answering(pykka.ThreadingActor):
    """Answers every ask at once, or, once `hang` is set, blocks until `release` is."""

    def __init__(self, hang: threading.Event, release: threading.Event):
        super().__init__()
        self.hang, self.release = hang, release

    def on_receive(self, message):
        if self.hang.is_set():
            self.release.wait()
        return True


class Datagrams:
    """A socket standing in for systemd's: every message with the time it arrived."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, list[str]]] = []
        self.on_ready = lambda: None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            lines = data.decode().split("\n")
            if "READY=1" in lines:
                self.on_ready()
            self.received.append((time.monotonic(), lines))

    def times(self, line: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [t for t, lines in list(self.received) if line in lines and since <= t <= until]

    def statuses(self) -> list[str]:
        return [x for _, lines in list(self.received) for x in lines if x.startswith("STATUS=")]

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self.sock.close()


def test_watchdog_pings_only_while_both_actors_answer(caplog):
    name = f"wasync-test-{uuid.uuid4().hex}"
    systemd = Datagrams("\0" + name)
    hang_writer, release = threading.Event(), threading.Event()
    supervisor = Answering.start(threading.Event(), release)
    writer = Answering.start(hang_writer, release)
    board = Board("test", "sqlite", Clock())
    board.set_ready(True)
    watchdog = SystemdWatchdog(Notifier("@" + name, watchdog_usec=400_000), board, supervisor, writer)

    async def scenario() -> float:
        watchdog.start()
        await asyncio.sleep(1.0)  # pings every 0.2 s
        hang_writer.set()
        hung_at = time.monotonic()
        await asyncio.sleep(1.0)
        await watchdog.stop()
        return hung_at

    try:
        with caplog.at_level(logging.WARNING, logger="wasync.watchdog"):
            hung_at = asyncio.run(scenario())
        wait_for(lambda: systemd.times("STOPPING=1"), 5, "STOPPING=1")
    finally:
        release.set()
        supervisor.stop()
        writer.stop()
        systemd.close()
    ready = systemd.times("READY=1")
    assert len(ready) == 1
    before = systemd.times("WATCHDOG=1", until=hung_at)
    assert 4 <= len(before) <= 7, before  # 1 s at one ping per 0.2 s
    # a round already asking when the writer hung may still ping; none after that
    assert systemd.times("WATCHDOG=1", since=hung_at + 0.25) == []
    assert "[supervisor] watchdog: writer did not answer in 0.16 s" in caplog.text
    assert any(s.startswith("STATUS=watchdog: writer did not answer") for s in systemd.statuses())
    assert systemd.statuses()[0] == "STATUS=passive: 0 accounts, 0 connected, 0 need repair, spool 0"


# --- a real daemon under a stand-in systemd ----------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    world = {"seed": 3, "accounts": [{"phone": PHONE, "pushName": "Shop SD", "initialSyncPerChat": 2, "chats": [
        {"jid": "15552223333@s.whatsapp.net", "name": "Alice",
         "messages": [{"id": "SD1", "ts": 1763900000, "text": "old"}]}]}]}
    process = SimProcess(world, tmp_path_factory.mktemp("sim")).start()
    yield process
    process.stop()


@pytest.fixture
def notify_socket():
    with tempfile.TemporaryDirectory(prefix="wsd") as short:  # AF_UNIX paths: at most 107 bytes
        path = os.path.join(short, "notify.sock")
        systemd = Datagrams(path)
        yield path, systemd
        systemd.close()


def under_systemd(sim, workdir: Path, notify_path: str) -> DaemonProcess:
    return DaemonProcess(workdir, {"WASYNC_TRANSPORT": sim.address, "WASYNC_DEBUG_FAULTS": "true",
                                   "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})


@pytest.mark.slow
def test_ready_then_pings_until_the_supervisor_hangs(sim, notify_socket, tmp_path):
    path, systemd = notify_socket
    daemon = under_systemd(sim, tmp_path / "daemon", path)
    ready_answers = []
    systemd.on_ready = lambda: ready_answers.append(daemon.get("/ready")[0])  # asked the moment READY=1 arrives
    try:
        daemon.start()
        wait_for(lambda: ready_answers, 10, "READY=1")
        assert ready_answers == [200] and len(systemd.times("READY=1")) == 1
        status, body = daemon.request("POST", "/api/whatsapp/accounts", {"accountId": "sd1", "phone": PHONE})
        assert status == 201, body
        wait_for(lambda: "STATUS=active: 1 accounts, 1 connected, 0 need repair, spool 0" in systemd.statuses(),
                 20, "a STATUS line with the account connected")

        window_start = time.monotonic()
        time.sleep(2.0)
        pings = systemd.times("WATCHDOG=1", since=window_start)
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        print(f"pings in 2 s: {len(pings)}, gaps {min(gaps):.2f}–{max(gaps):.2f} s (period {PERIOD_S} s)")
        assert 3 <= len(pings) <= 6 and max(gaps) < 2 * PERIOD_S, pings

        for bad in ({"kind": "raise", "target": "supervisor"}, {"kind": "block", "target": "writer"}):
            assert daemon.request("POST", "/api/admin/debug/fault/sd1", bad)[0] == 400, bad
        status, body = daemon.request("POST", "/api/admin/debug/fault/sd1", {"kind": "block", "target": "supervisor"})
        assert status == 200, body
        blocked_at = time.monotonic()
        time.sleep(PERIOD_S + 3 * PERIOD_S)  # a round already under way may still ping; then silence
        assert systemd.times("WATCHDOG=1", since=blocked_at + PERIOD_S) == [], daemon.tail()
        log = daemon.log.read_text()
        assert "[supervisor] watchdog: supervisor did not answer in 0.4 s" in log, daemon.tail()
        assert "writer did not answer" not in log
        assert any(s.startswith("STATUS=watchdog: supervisor did not answer") for s in systemd.statuses())
        assert daemon.get("/health")[0] == 200  # the loop is fine: only the supervisor is stuck
    finally:
        daemon.kill()  # a blocked supervisor cannot drain: under systemd, SIGABRT after WatchdogSec


@pytest.mark.slow
def test_sigterm_says_stopping_before_the_process_exits(sim, notify_socket, tmp_path):
    path, systemd = notify_socket
    daemon = under_systemd(sim, tmp_path / "daemon", path).start()
    wait_for(lambda: systemd.times("WATCHDOG=1"), 10, "a first WATCHDOG=1")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=45) == 0, daemon.tail()
    # Sent by the process, so before it exited; the reading thread may take a moment.
    stopping = wait_for(lambda: systemd.times("STOPPING=1"), 5, "STOPPING=1")
    assert len(stopping) == 1, systemd.received[-3:]
    assert systemd.times("WATCHDOG=1", since=stopping[0]) == []  # the drain is not pinged through
    assert systemd.times("READY=1")[0] < stopping[0]
