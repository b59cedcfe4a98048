"""`wasync sim` as a real process for tests, with its control API over real HTTP."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent


class SimProcess:
    def __init__(self, world: dict | Path, workdir: Path, speed: float = 1.0):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(world, dict):
            path = self.workdir / "world.json"
            path.write_text(json.dumps(world))
            world = path
        self.world_path = Path(world)
        self.speed = speed
        self.log = self.workdir / "sim.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None

    def start(self, timeout_s: float = 20.0) -> "SimProcess":
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wasync.runtime.cli", "sim", "--world", str(self.world_path),
                 "--host", "127.0.0.1", "--port", "0", "--speed", str(self.speed)],
                stderr=err, stdout=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wasync sim exited {self.proc.returncode}: {self.log.read_text()}")
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if found:
                self.port = int(found.group(1))
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"wasync sim did not start: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    @property
    def address(self) -> str:
        return f"sim://127.0.0.1:{self.port}"

    # --- control API -------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def world(self) -> dict:
        return self.call("GET", "/sim/world")[1]

    def stats(self) -> dict:
        return self.call("GET", "/sim/stats")[1]

    def inject(self, *events: dict) -> None:
        status, body = self.call("POST", "/sim/events", list(events))
        assert status == 200, body

    def scan(self, phone: str, qr: str) -> int:
        return self.call("POST", f"/sim/accounts/{phone}/scan", {"qr": qr})[0]


def wait_for(check: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
