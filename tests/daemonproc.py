"""`wasync run` as a real process for end-to-end tests and benchmarks."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    def __init__(self, workdir: Path, env: dict[str, str], port: Optional[int] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WASYNC_", "WHATSAPP_"))},
                    "PORT": str(self.port), "HOST": "127.0.0.1", "WASYNC_DATA_DIR": str(self.workdir / "data"),
                    "INSTANCE_ID": f"test-{self.port}", "LOG_LEVEL": "info", **env}
        self.log = self.workdir / f"daemon-{self.port}.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout_s: float = 30.0) -> "DaemonProcess":
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wasync.runtime.cli", "run"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wasync run exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.get("/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"wasync run not ready within {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 45.0) -> int:
        """SIGTERM: the daemon drains and exits 0."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"wasync run ignored SIGTERM for {timeout_s:.0f} s:\n{self.tail()}")
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (the crash tests)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def request(self, method: str, path: str, body: Any = None, token: Optional[str] = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw

    def get(self, path: str, token: Optional[str] = None) -> tuple[int, Any]:
        return self.request("GET", path, token=token)
