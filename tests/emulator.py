"""Start and stop the Firestore emulator (`gcloud emulators firestore start`) for tests
and benchmarks. A missing gcloud or an emulator that does not come up is an error, not
a skip: CI must not pass without exercising Firestore."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


class EmulatorUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FirestoreEmulator:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(tempfile.gettempdir(), f"wasync-firestore-emulator-{self.port}.log")

    def start(self, timeout_s: float = 90.0) -> "FirestoreEmulator":
        gcloud = shutil.which("gcloud")
        if not gcloud:
            raise EmulatorUnavailable("gcloud is not on PATH; the Firestore tests need "
                                      "`gcloud emulators firestore start` (cloud-firestore-emulator component)")
        log = open(self.log_path, "wb")
        # Its own process group: gcloud starts java as a child, and both must go.
        self.proc = subprocess.Popen(
            [gcloud, "emulators", "firestore", "start", f"--host-port={self.host}", "--quiet"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmulatorUnavailable(f"the Firestore emulator exited early; see {self.log_path}:\n"
                                          + open(self.log_path, errors="replace").read()[-2000:])
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise EmulatorUnavailable(f"the Firestore emulator did not answer within {timeout_s:.0f} s; see {self.log_path}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.proc = None

    def reset(self, project: str) -> None:
        """Delete every document of `project`."""
        req = urllib.request.Request(
            f"http://{self.host}/emulator/v1/projects/{project}/databases/(default)/documents", method="DELETE")
        urllib.request.urlopen(req, timeout=10).close()


@contextlib.contextmanager
def emulator_env(address: str | None, log=lambda text: None):
    """FIRESTORE_EMULATOR_HOST set for the block: `address` (a running emulator), or one
    started here and stopped afterwards (the benchmarks)."""
    emulator = None
    if address is None:
        log("starting the Firestore emulator …")
        emulator = FirestoreEmulator().start()
        address = emulator.host
    os.environ["FIRESTORE_EMULATOR_HOST"] = address
    try:
        yield address
    finally:
        if emulator is not None:
            emulator.stop()
