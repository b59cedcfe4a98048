"""`wasync doctor`: what an operator checks first, each with a verdict and a hint.
Exit 0 when every check passes, 1 otherwise."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wasync.runtime.config import Settings

EARLIEST_SANE_S = 1_735_689_600  # 2025-01-01: a clock before this breaks TLS and WhatsApp
LATEST_SANE_S = 4_102_444_800  # 2100-01-01


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str


def check_neonize() -> Verdict:
    try:
        from wasync.runtime.transport.neonize_probe import load_neonize_version

        return Verdict("neonize", True, f"Go library loads (goneonize {load_neonize_version()})")
    except Exception as exc:
        return Verdict("neonize", False, f"cannot load: {type(exc).__name__}: {exc}; reinstall with `make run`")


def check_writable(name: str, path: str) -> Verdict:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        return Verdict(name, True, f"{Path(path).resolve()} is writable")
    except OSError as exc:
        return Verdict(name, False, f"{path}: {exc.strerror or exc}; fix its permissions or set another path")


def check_store(settings: Settings) -> Verdict:
    from wasync.runtime.daemon import make_store

    try:
        store = make_store(settings)
    except Exception as exc:
        return Verdict("store", False, f"{settings.store}: cannot open: {exc}")
    try:
        started = time.monotonic()
        ok = store.ping()
        took = (time.monotonic() - started) * 1000
        if ok:
            return Verdict("store", True, f"{store.name} answers ({took:.0f} ms)")
        return Verdict("store", False, f"{store.name} does not answer; check credentials, network, "
                                       "FIRESTORE_EMULATOR_HOST / GOOGLE_CLOUD_PROJECT")
    finally:
        store.close()


def check_clock() -> Verdict:
    now = time.time()
    if not EARLIEST_SANE_S < now < LATEST_SANE_S:
        return Verdict("clock", False, f"system time {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC "
                                       "is not plausible; WhatsApp and TLS need a correct clock (enable NTP)")
    return Verdict("clock", True, f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC")


def run_checks(settings: Settings) -> list[Verdict]:
    checks: list[Callable[[], Verdict]] = [
        check_clock,
        lambda: check_writable("data dir", settings.data_dir),
        lambda: check_store(settings),
    ]
    if not settings.sim_address:
        checks.insert(0, check_neonize)
        if not settings.sessions_dsn:
            checks.insert(2, lambda: check_writable("sessions path", settings.sessions_path))
    return [check() for check in checks]


def main(settings: Settings) -> int:
    verdicts = run_checks(settings)
    for v in verdicts:
        print(f"{'OK  ' if v.ok else 'FAIL'} {v.name:14} {v.detail}")
    return 0 if all(v.ok for v in verdicts) else 1
