"""ops/pm2/ecosystem.config.js under a real pm2 (7.0.4, from npm): `pm2 start` runs
`wasync run` against a real `wasync sim`, and `pm2 stop` lets it drain: exit 0 through
its own shutdown (not pm2's SIGKILL), the spool empty, every message in the store.

pm2 is installed once into ~/.cache/wasync-test-pm2 (WASYNC_TEST_PM2_CACHE overrides)
and reused; each test runs its own pm2 daemon (PM2_HOME in a temporary directory) and
kills it at the end. Skipped when node or npm is missing, or npm cannot install pm2.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import groundtruth as gt
from daemonproc import ROOT, free_port
from simproc import SimProcess, wait_for
from wasync.runtime.spool import Spool, spool_path
from wasync.runtime.store.sqlite import SqliteStore

PM2_VERSION = "7.0.4"
PM2_CACHE = Path(os.environ.get("WASYNC_TEST_PM2_CACHE") or Path.home() / ".cache" / "wasync-test-pm2")
ECOSYSTEM = ROOT / "ops" / "pm2" / "ecosystem.config.js"
APP = "wasync-a"
PHONE = "15550071001"
ALICE = "15552223333@s.whatsapp.net"
SIGNALLED = "[supervisor] signal received: draining"
DRAINED = "[supervisor] shutting down: spool empty (0 events left for the next start)"
# Settings the test's own environment might carry into pm2 (pm2 hands the shell's
# environment to its apps): the ecosystem file and the test decide them.
FOREIGN = ("WASYNC_", "WHATSAPP_", "PM2_")
FOREIGN_NAMES = {"HOST", "PORT", "INSTANCE_ID", "ADMIN_TOKEN", "LOG_FORMAT", "NEONIZE_BOT_TAG"}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN) and k not in FOREIGN_NAMES}


@pytest.fixture(scope="session")
def pm2_bin() -> Path:
    """pm2's command, installed with npm into the cache on first use."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH: pm2 cannot be installed or run")
    PM2_CACHE.mkdir(parents=True, exist_ok=True)
    installed = PM2_CACHE / "node_modules" / "pm2" / "package.json"
    with open(PM2_CACHE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions: one installs, the other waits
        if not installed.exists() or json.loads(installed.read_text())["version"] != PM2_VERSION:
            started = time.monotonic()
            done = subprocess.run(["npm", "install", "--prefix", str(PM2_CACHE), "--no-audit", "--no-fund",
                                   "--loglevel=error", f"pm2@{PM2_VERSION}"],
                                  check=False, capture_output=True, text=True, timeout=240)
            if done.returncode != 0:
                pytest.skip(f"npm could not install pm2@{PM2_VERSION} into {PM2_CACHE}: "
                            f"{(done.stderr or done.stdout)[-600:]}")
            print(f"pm2 {PM2_VERSION} installed into {PM2_CACHE} in {time.monotonic() - started:.1f} s")
    return PM2_CACHE / "node_modules" / ".bin" / "pm2"


class Pm2:
    """One pm2 daemon of its own (PM2_HOME), driven through its command line."""

    def __init__(self, binary: Path, env: dict[str, str]):
        self.binary = binary
        self.home = Path(tempfile.mkdtemp(prefix="wasync-pm2-"))  # short: pm2's sockets live here
        self.env = {**env, "PM2_HOME": str(self.home), "NO_COLOR": "1"}

    def __call__(self, *args: str, timeout_s: float = 120) -> str:
        done = subprocess.run([str(self.binary), *args], env=self.env, check=False, capture_output=True,
                              text=True, timeout=timeout_s)
        assert done.returncode == 0, f"pm2 {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(self.binary), *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def app(self, name: str) -> dict:
        listing = next(line for line in self("jlist").splitlines() if line.startswith("["))
        return next(app for app in json.loads(listing) if app["name"] == name)

    def log(self) -> str:
        """The pm2 daemon's own log: starts, stops, exits, SIGKILLs."""
        return (self.home / "pm2.log").read_text(errors="replace")

    def kill(self) -> None:
        try:
            subprocess.run([str(self.binary), "kill"], env=self.env, check=False, capture_output=True, timeout=150)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


def http(port: int, method: str, path: str, body=None) -> tuple[int, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:  # not listening (yet, or any more)
        return 0, str(exc)


def acknowledged(sim: SimProcess, live: int) -> bool:
    """Every live message delivered and acknowledged: in wasync's spool at least."""
    s = sim.stats()["accounts"][PHONE]
    return s["delivered"] >= live and not s["unacked"] and not s["held"]


def spool_rows(path: Path) -> int:
    """Events waiting in a spool file (read-only: the daemon may hold it)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()


def ecosystem_apps(env: dict[str, str]) -> list[dict]:
    """The apps the ecosystem file declares, as pm2 reads them (node evaluates the file)."""
    script = f"console.log(JSON.stringify(require({json.dumps(str(ECOSYSTEM))}).apps))"
    done = subprocess.run(["node", "-e", script], env=env, capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_the_ecosystem_file_declares_two_instances_on_one_data_dir():
    if shutil.which("node") is None:
        pytest.skip("node not on PATH")
    base = clean_env()
    a, b = ecosystem_apps(base)
    for app in (a, b):
        assert app["script"] == "/opt/wasync/.venv/bin/wasync" and app["args"] == "run"
        assert app["interpreter"] == "none" and app["exec_mode"] == "fork" and app["instances"] == 1
        assert app["namespace"] == "wasync"  # `pm2 stop wasync` stops them all
        assert app["kill_timeout"] >= 60000, "shorter than the drain may take (two 30 s waits)"
        assert app["treekill"] is False, "pm2 would wait for neonize's unreaped `sh` children too"
        assert app["env"]["NEONIZE_BOT_TAG"] == "off" and app["env"]["PYTHONUNBUFFERED"] == "1"
        assert app["out_file"] == app["error_file"] == f"/opt/wasync/logs/{app['name']}.log"
    assert a["env"]["WASYNC_DATA_DIR"] == b["env"]["WASYNC_DATA_DIR"] == "/opt/wasync/data"
    assert (a["env"]["PORT"], b["env"]["PORT"]) == ("8080", "8081")
    assert a["env"]["INSTANCE_ID"] != b["env"]["INSTANCE_ID"]

    moved = ecosystem_apps({**base, "WASYNC_HOME": "/srv/w", "WASYNC_PORT": "9000",
                            "WASYNC_INSTANCE_PREFIX": "fra-1"})[1]
    assert moved["script"] == "/srv/w/.venv/bin/wasync" and moved["env"]["WASYNC_DATA_DIR"] == "/srv/w/data"
    assert (moved["env"]["PORT"], moved["env"]["INSTANCE_ID"]) == ("9001", "fra-1-b")


@pytest.mark.slow
def test_pm2_stop_lets_wasync_drain(tmp_path, pm2_bin):
    if not (ROOT / ".venv" / "bin" / "wasync").exists():
        pytest.skip(f"the ecosystem file runs $WASYNC_HOME/.venv/bin/wasync: {ROOT}/.venv has none")
    world = {"seed": 7, "accounts": [{"phone": PHONE, "initialSyncPerChat": 5, "chats": [
        {"jid": ALICE, "name": "Alice",
         "messages": [{"id": f"PM2H{i}", "ts": 1763900000 + i, "text": f"old {i}"} for i in range(3)]}]}]}
    live_ids = [f"PM2LIVE{i:03d}" for i in range(40)]
    data_dir, log_dir = tmp_path / "data", tmp_path / "logs"  # pm2 creates the log directory
    port = free_port()
    sim = SimProcess(world, tmp_path / "sim").start()
    pm2 = Pm2(pm2_bin, {**clean_env(), "WASYNC_HOME": str(ROOT), "WASYNC_DATA_DIR": str(data_dir),
                        "WASYNC_LOG_DIR": str(log_dir), "WASYNC_PORT": str(port),
                        "WASYNC_INSTANCE_PREFIX": "pm2test", "WASYNC_TRANSPORT": sim.address})
    app_log = log_dir / f"{APP}.log"
    spool_file = spool_path(data_dir, "pm2test-a")

    def logs() -> str:
        return (f"--- {app_log} ---\n{app_log.read_text(errors='replace')[-3000:] if app_log.exists() else ''}\n"
                f"--- pm2.log ---\n{pm2.log()[-2000:] if (pm2.home / 'pm2.log').exists() else ''}")

    try:
        started = time.monotonic()
        pm2("start", str(ECOSYSTEM), "--only", APP)
        try:
            wait_for(lambda: http(port, "GET", "/ready")[0] == 200, 30, "/ready under pm2")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None
        ready_s = time.monotonic() - started
        status, body = http(port, "POST", "/api/whatsapp/accounts", {"accountId": "a1", "phone": PHONE})
        assert status == 201, body
        wait_for(lambda: http(port, "GET", "/api/whatsapp/accounts/a1/health")[1].get("status") == "connected",
                 20, "a1 connected")
        # Hold the store's write lock, as a store outage would: the live messages stay in
        # the spool until after pm2's signal, so the drain has them to write.
        blocker = sqlite3.connect(data_dir / "wasync.db", timeout=10, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            sim.inject(*({"account": PHONE, "event": "message", "chat": ALICE, "id": mid, "text": f"live {mid}"}
                         for mid in live_ids))
            wait_for(lambda: acknowledged(sim, len(live_ids)), 20, "the live messages acknowledged by wasync")
            depth_at_signal = spool_rows(spool_file)
            assert depth_at_signal >= len(live_ids), depth_at_signal
            t0 = time.monotonic()
            stopping = pm2.popen("stop", APP)
            wait_for(lambda: SIGNALLED in app_log.read_text(errors="replace"), 10, "wasync to get pm2's signal")
            time.sleep(0.5)
        finally:
            blocker.rollback()
            blocker.close()
        out, _ = stopping.communicate(timeout=120)
        stop_s = time.monotonic() - t0
        assert stopping.returncode == 0, out
        print(f"pm2 start -> /ready {ready_s:.1f} s; pm2 stop -> stopped {stop_s:.1f} s, 0.5 s of it with the "
              f"store locked ({depth_at_signal} events in the spool at the signal)")

        # pm2's side: the app stopped by itself with 0, well within kill_timeout; no SIGKILL.
        app = pm2.app(APP)
        assert app["pm2_env"]["status"] == "stopped" and app["pid"] == 0, app["pm2_env"]["status"]
        daemon_log = pm2.log()
        assert f"App [{APP}:0] exited with code [0]" in daemon_log, logs()
        for sign in ("still alive after", "sending SIGKILL", "via signal [SIGKILL]", "could not be stopped"):
            assert sign not in daemon_log, f"pm2 had to kill wasync ({sign!r}):\n{logs()}"
        assert stop_s < 15, f"pm2 stop took {stop_s:.1f} s\n{logs()}"

        # wasync's side: its drain ran to the end, then it released its lease.
        text = app_log.read_text(errors="replace")
        signal_at, drained_at = text.rfind(SIGNALLED), text.rfind(DRAINED)
        released_at = text.rfind("[lease] releasing 1 leases (keeping 0) and leaving")
        assert -1 < signal_at < drained_at < released_at, f"no complete drain in the app log\n{logs()}"

        spool = Spool(spool_file)
        try:
            assert (spool.depth(), spool.quarantined()) == (0, [])
        finally:
            spool.close()
        db = sqlite3.connect(f"file:{data_dir / 'wasync.db'}?mode=ro", uri=True)
        try:
            stored = [row[0] for row in db.execute("SELECT id FROM messages WHERE id LIKE 'PM2LIVE%'")]
        finally:
            db.close()
        assert sorted(stored) == live_ids, f"{len(stored)} of {len(live_ids)} live messages stored"
        store = SqliteStore(data_dir / "wasync.db")
        try:
            lease = store.get_lease("a1")
            assert (lease.holder, lease.expires_at_ms) == ("pm2test-a", 0), lease  # released at the stop
            problems = gt.compare(store, sim.world(), {PHONE: "a1"})
            assert not problems, gt.summary(problems)
        finally:
            store.close()
    finally:
        pm2.kill()
        sim.stop()
