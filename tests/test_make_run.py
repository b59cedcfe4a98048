"""`make run` (the README's first command) passes SIGTERM on to the daemon, which drains
and exits: a process manager or a shell that stops `make` stops wasync too."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request

import pytest

from daemonproc import ROOT, free_port
from simproc import SimProcess, wait_for

pytestmark = pytest.mark.slow


def test_sigterm_to_make_run_drains_the_daemon(tmp_path):
    sim = SimProcess({"seed": 1, "accounts": [{"phone": "15550001111", "chats": []}]}, tmp_path / "sim").start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WASYNC_", "MAKE"))}
    env.update(PORT=str(port), WASYNC_DATA_DIR=str(tmp_path / "data"), WASYNC_TRANSPORT=sim.address)
    log = open(tmp_path / "make.log", "w")
    make = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _ready(port), timeout_s=60, what="the daemon started by make run")
        make.send_signal(signal.SIGTERM)  # to make only, as `kill <pid>` would
        make.wait(timeout=45)
        time.sleep(0.2)
        text = (tmp_path / "make.log").read_text()
        assert "draining" in text, text[-2000:]
        assert not _ready(port), "the daemon still answers after make was stopped"
    finally:
        if make.poll() is None:
            make.kill()
        sim.stop()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
