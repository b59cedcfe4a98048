"""Pairing through the daemon's API and `wasync pair`, against a real `wasync sim`."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from daemonproc import ROOT, DaemonProcess
from simproc import SimProcess, wait_for

pytestmark = pytest.mark.slow

NEW, OTHER, THIRD = "15550002222", "15550003333", "15550004444"
WORLD = {"seed": 9, "accounts": [
    {"phone": p, "pushName": f"Shop {p[-1]}", "paired": False, "chats": [
        {"jid": "15552223333@s.whatsapp.net", "name": "Alice",
         "messages": [{"id": f"P{p[-4:]}", "ts": 1763900000, "text": "hello"}]}]}
    for p in (NEW, OTHER, THIRD)]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("pairing")
    sim = SimProcess(WORLD, base / "sim", speed=1).start()
    daemon = DaemonProcess(base / "daemon", {"WASYNC_TRANSPORT": sim.address,
                                             "WASYNC_MAX_STARTS_PER_SECOND": "50"}).start()
    yield sim, daemon
    assert daemon.stop() == 0
    sim.stop()


def status_of(daemon, account_id):
    accounts = daemon.get("/api/whatsapp/accounts")[1]["accounts"]
    return next((a.get("status") for a in accounts if a["accountId"] == account_id), None)


def test_qr_in_every_format_then_scan_pairs_the_account(world):
    sim, daemon = world
    assert daemon.request("POST", "/api/whatsapp/accounts", {"accountId": "b1"})[0] == 201
    code = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(
        daemon.get("/api/whatsapp/accounts/b1/qr?format=text")), what="a QR code")
    code = code.decode() if isinstance(code, bytes) else code
    status, png = daemon.get("/api/whatsapp/accounts/b1/qr?format=png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    status, svg = daemon.get("/api/whatsapp/accounts/b1/qr?format=svg")
    assert status == 200 and b"<svg" in svg
    assert daemon.get("/api/whatsapp/accounts/b1/qr?format=gif")[0] == 400
    assert sim.scan(NEW, code) == 200
    wait_for(lambda: status_of(daemon, "b1") == "connected", what="b1 connected after the scan")
    status, body = daemon.get("/api/whatsapp/accounts/b1/qr?format=text")
    assert status == 404 and body["error"]["code"] == "no_qr"


def test_pair_command_shows_the_qr_and_waits_for_success(world):
    sim, daemon = world
    proc = subprocess.Popen([sys.executable, "-m", "wasync.runtime.cli", "pair", "c1", "--timeout", "60"],
                            env={**daemon.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("Scan with WhatsApp" in line for line in lines), what="the QR in the terminal")
        code = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(
            daemon.get("/api/whatsapp/accounts/c1/qr?format=text")), what="the pair command's account QR")
        assert sim.scan(OTHER, code.decode() if isinstance(code, bytes) else code) == 200
        proc.wait(timeout=60)
        reader.join(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert any("paired: c1 is connected" in line for line in lines)


def test_pair_new_relinks_a_working_account(world):
    """`wasync pair c1 --new`: the connected c1 forgets its session and shows a new QR."""
    sim, daemon = world
    assert status_of(daemon, "c1") == "connected"
    before = daemon.get("/api/whatsapp/accounts/c1/qr?format=text")[0]
    assert before == 404  # connected: no QR
    proc = subprocess.Popen([sys.executable, "-m", "wasync.runtime.cli", "pair", "c1", "--new", "--timeout", "60"],
                            env={**daemon.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        code = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(
            daemon.get("/api/whatsapp/accounts/c1/qr?format=text")), what="a new QR for c1")
        assert sim.scan(OTHER, code.decode() if isinstance(code, bytes) else code) == 200
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "a new pairing starts" in err and "paired: c1 is connected" in out


def test_pair_phone_code_and_regenerate(world):
    sim, daemon = world
    assert daemon.request("POST", "/api/whatsapp/accounts", {"accountId": "d1"})[0] == 201
    wait_for(lambda: daemon.get("/api/whatsapp/accounts/d1/qr?format=text")[0] == 200, what="pairing started")
    assert daemon.request("POST", "/api/whatsapp/regenerate-qr/d1")[0] == 200
    wait_for(lambda: daemon.get("/api/whatsapp/accounts/d1/qr?format=text")[0] == 200, what="pairing again")
    status, body = daemon.request("POST", "/api/whatsapp/accounts/d1/pair-phone", {"phone": "+1 555-000-4444"})
    assert status == 200, body
    assert len(body["code"].replace("-", "")) == 8
    assert sim.scan(THIRD, body["code"]) == 200
    wait_for(lambda: status_of(daemon, "d1") == "connected", what="d1 connected by phone code")


def test_pairing_errors(world):
    _, daemon = world
    assert daemon.get("/api/whatsapp/accounts/nobody/qr")[0] == 404
    assert daemon.request("POST", "/api/whatsapp/regenerate-qr/nobody")[0] == 404
    assert daemon.request("POST", "/api/whatsapp/accounts/nobody/pair-phone", {"phone": "15550001111"})[0] == 404
    assert daemon.request("POST", "/api/whatsapp/accounts/b1/pair-phone", {"phone": "12"})[0] == 400
    assert daemon.request("POST", "/api/whatsapp/accounts/b1/pair-phone", {"tel": "15550001111"})[0] == 400
