"""`wasync doctor` as an operator runs it: a verdict per check, exit 1 on any failure."""
from __future__ import annotations

import os
import subprocess
import sys

from daemonproc import ROOT, free_port


def doctor(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WASYNC_", "SESSIONS_", "FIRESTORE_"))}
    result = subprocess.run([sys.executable, "-m", "wasync.runtime.cli", "doctor"], cwd=ROOT, timeout=120,
                            env={**base, "WASYNC_DATA_DIR": str(tmp_path / "data"), **env},
                            capture_output=True, text=True)
    return result.returncode, result.stdout


def test_all_good(tmp_path):
    code, out = doctor(tmp_path)
    assert code == 0, out
    for name in ("neonize", "clock", "sessions path", "data dir", "store"):
        assert any(line.startswith("OK") and f" {name} " in line for line in out.splitlines()), out


def test_an_unwritable_sessions_path_fails_with_a_hint(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out = doctor(tmp_path, SESSIONS_PATH=str(blocker / "sessions"))
    assert code == 1
    line = next(line for line in out.splitlines() if "sessions path" in line)
    assert line.startswith("FAIL") and "set another path" in line


def test_an_unreachable_firestore_fails(tmp_path):
    code, out = doctor(tmp_path, WASYNC_STORE="firestore", GOOGLE_CLOUD_PROJECT="doctor-test",
                       FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}")
    assert code == 1
    assert next(line for line in out.splitlines() if " store " in line).startswith("FAIL")
