"""Sending for real (SPEC §5): `wasync run` processes, one `wasync sim`, the SQLite store.
The simulator is the judge of "never sent twice": its world lists every message a client
sent (`via: sent`), and its stats count distinct sends (`sent`) apart from sends under an
id already sent (`sentAgain`: the same message, which WhatsApp does not deliver twice).

Crashes are real SIGKILLs: the debug fault route (WASYNC_DEBUG_FAULTS) arms the account's
outbox actor to SIGKILL its own process right after a claim, or right after WhatsApp
accepted the message and before that was recorded.
"""
from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path

import pytest

from daemonproc import DaemonProcess
from simproc import SimProcess, wait_for
from wasync.runtime.outbox import new_item_id

pytestmark = pytest.mark.slow

PHONE, RACE_PHONE = "15550001111", "15550002222"
ALICE = "15552223333@s.whatsapp.net"
NOBODY = "15559990000"  # not on WhatsApp
WORLD = {"seed": 21, "notOnWhatsApp": [NOBODY], "accounts": [
    {"phone": p, "initialSyncPerChat": 2, "chats": [
        {"jid": ALICE, "name": "Alice", "messages": [{"id": f"H{p[-4:]}", "ts": 1763900000, "text": "hi"}]}]}
    for p in (PHONE, RACE_PHONE)]}
LEASE_MS = "3000"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    sim = SimProcess(WORLD, tmp_path_factory.mktemp("outbox-sim"), speed=1).start()
    yield sim
    sim.stop()


def daemon_for(sim: SimProcess, workdir: Path, name: str = "i1", **env) -> DaemonProcess:
    return DaemonProcess(workdir, {"WASYNC_TRANSPORT": sim.address, "INSTANCE_ID": name, "WASYNC_LEASE_MS": LEASE_MS,
                                   "WASYNC_OUTBOX_POLL_SECONDS": "1", "WASYNC_DEBUG_FAULTS": "true",
                                   "WASYNC_ADMIN_RATE_PER_MINUTE": "100000", **env})


def sent_by_clients(sim: SimProcess, phone: str) -> list[dict]:
    account = next(a for a in sim.world()["accounts"] if a["phone"] == phone)
    return [m for chat in account["chats"] for m in chat["messages"] if m.get("via") == "sent"]


def stats(sim: SimProcess, phone: str) -> dict:
    return sim.stats()["accounts"][phone]


def send(daemon: DaemonProcess, text: str, to: str = ALICE, account: str = "acc1", **extra) -> dict:
    status, body = daemon.request("POST", "/api/whatsapp/send-message",
                                  {"accountId": account, "to": to, "text": text, **extra})
    assert status == 202, body
    return body


def item(daemon: DaemonProcess, item_id: str) -> dict:
    return daemon.get(f"/api/whatsapp/outbox/items/{item_id}")[1]["item"]


def connected(daemon: DaemonProcess, account: str = "acc1") -> bool:
    status, body = daemon.get(f"/api/whatsapp/accounts/{account}/health")
    return status == 200 and body["connected"]


def test_send_receipts_failures_and_sending_after_a_reconnect(sim, tmp_path):
    daemon = daemon_for(sim, tmp_path).start()
    try:
        assert daemon.request("POST", "/api/whatsapp/accounts", {"accountId": "acc1", "phone": PHONE})[0] == 201
        wait_for(lambda: connected(daemon), what="acc1 connected")
        before = stats(sim, PHONE)["sent"]

        queued = send(daemon, "your order is ready", clientMessageId="order-1")
        assert queued["message"]["status"] == "queued" and queued["message"]["syncSource"] == "outbox"
        item_id = queued["outbox"]["id"]
        wait_for(lambda: item(daemon, item_id)["status"] == "sent", what="the item sent")
        assert send(daemon, "your order is ready", clientMessageId="order-1")["created"] is False
        # One message document, under the id WhatsApp knows it by; receipts move it on.
        thread = f"acc1__{ALICE}"

        def stored():
            return [m for m in daemon.get(f"/api/whatsapp/messages/acc1/{thread}")[1]["messages"]
                    if m.get("outboxId") == item_id]

        wait_for(lambda: [m["status"] for m in stored()] == ["read"], timeout_s=20, what="read receipt applied")
        assert [m["id"] for m in stored()] == [item_id]
        assert [m["id"] for m in sent_by_clients(sim, PHONE)] == [item_id]
        assert stats(sim, PHONE)["sent"] - before == 1

        # Not on WhatsApp: fails for good, with the reason, and nothing reaches the phone.
        failed = send(daemon, "hello?", to=NOBODY)["outbox"]["id"]
        wait_for(lambda: item(daemon, failed)["status"] == "failed", what="the send to nobody failed")
        assert "not_on_whatsapp" in item(daemon, failed)["error"]

        # Accepted while disconnected: queued until the session is back, then sent.
        sim.inject({"account": PHONE, "event": "disconnect", "for": 4.0})
        wait_for(lambda: not connected(daemon), what="acc1 disconnected")
        later = send(daemon, "sent after the reconnect")["outbox"]["id"]
        time.sleep(1.0)
        assert item(daemon, later)["status"] in ("queued", "sending")
        assert "sent after the reconnect" not in [m.get("text") for m in sent_by_clients(sim, PHONE)]
        wait_for(lambda: item(daemon, later)["status"] == "sent", timeout_s=20, what="sent after the reconnect")
        assert [m["text"] for m in sent_by_clients(sim, PHONE)].count("sent after the reconnect") == 1
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("point", ["claimed", "sent"])
def test_a_sigkill_mid_send_never_sends_twice(sim, tmp_path, point):
    account = f"k{point}"
    daemon = daemon_for(sim, tmp_path).start()
    status, body = daemon.request("POST", "/api/whatsapp/accounts", {"accountId": account, "phone": PHONE})
    assert status == 201, body
    wait_for(lambda: connected(daemon, account), timeout_s=20, what=f"{account} connected")
    before = stats(sim, PHONE)
    text = f"crash after {point}"
    status, body = daemon.request("POST", f"/api/admin/debug/fault/{account}", {"kind": f"outbox-crash-{point}"})
    assert status == 200, body
    # The process may kill itself before its 202 is written (the send starts at once):
    # the item's id follows from the clientMessageId either way.
    item_id = new_item_id(account, f"crash-{point}")
    try:
        assert send(daemon, text, account=account, clientMessageId=f"crash-{point}")["outbox"]["id"] == item_id
    except (http.client.RemoteDisconnected, ConnectionResetError):
        pass
    daemon.proc.wait(timeout=20)
    assert daemon.proc.returncode == -signal.SIGKILL, daemon.tail()
    reached = [m for m in sent_by_clients(sim, PHONE) if m["text"] == text]
    assert len(reached) == (1 if point == "sent" else 0)

    daemon.start()  # the same instance, as a process manager restarts it
    try:
        wait_for(lambda: item(daemon, item_id)["status"] == "sent", timeout_s=30, what="the orphan sent")
        after = stats(sim, PHONE)
        assert [m["id"] for m in sent_by_clients(sim, PHONE) if m["text"] == text] == [item_id]
        assert after["sent"] - before["sent"] == 1
        # After a send that reached WhatsApp, the resend went under the same id: the same message.
        assert after["sentAgain"] - before["sentAgain"] == (1 if point == "sent" else 0)
        done = item(daemon, item_id)
        assert done["attempts"] == 2 and done["waMessageId"] == item_id
        messages = daemon.get(f"/api/whatsapp/messages/{account}/{ALICE}")[1]["messages"]
        assert [m["id"] for m in messages if m.get("body") == text] == [item_id]
    finally:
        daemon.request("DELETE", f"/api/whatsapp/accounts/{account}")
        assert daemon.stop() == 0


def test_two_instances_racing_on_one_account_send_each_message_once(sim, tmp_path):
    """Two instances share one SQLite store (one data directory); messages are queued
    through both while the holder is SIGKILLed, restarted, and the next holder frozen
    (SIGSTOP) for two leases."""
    shared = tmp_path / "shared"
    # Connects take 500 ms, as neonize's registrations do: the freeze below then often
    # lands while the new holder is connecting, and when it wakes that connect kicks the
    # instance that took the lease meanwhile (StreamReplaced, which once left it deaf).
    slow = {"WASYNC_SIM_REGISTRATION_MS": "500"}
    one = daemon_for(sim, shared, "i1", **slow).start()
    two = daemon_for(sim, shared, "i2", **slow).start()
    daemons = {"i1": one, "i2": two}
    before = stats(sim, RACE_PHONE)
    assert one.request("POST", "/api/whatsapp/accounts", {"accountId": "race", "phone": RACE_PHONE})[0] == 201

    def holder() -> str:
        for d in daemons.values():
            if d.proc.poll() is None:
                try:
                    status, body = d.get("/api/whatsapp/accounts/race/health")
                except OSError:
                    continue
                if status == 200 and body.get("leaseHolder"):
                    return body["leaseHolder"]
        return ""

    wait_for(lambda: holder() and connected(daemons[holder()], "race"), timeout_s=30, what="race connected")
    texts = [f"race message {n:02d}" for n in range(40)]
    ids: list[str] = []
    frozen: set[str] = set()
    done = threading.Event()

    def queue_all():  # through whichever instances answer, alternately, all along the scenario
        for n, text in enumerate(texts):
            for attempt in range(100):
                alive = [name for name, d in daemons.items() if d.proc.poll() is None and name not in frozen]
                if alive:
                    try:
                        target = daemons[alive[(n + attempt) % len(alive)]]
                        ids.append(send(target, text, account="race", clientMessageId=f"race-{n}")["outbox"]["id"])
                        break
                    except (OSError, AssertionError):
                        pass
                time.sleep(0.2)
            time.sleep(0.3)
        done.set()

    sender = threading.Thread(target=queue_all, daemon=True)
    sender.start()
    time.sleep(1.5)
    first = holder()
    daemons[first].kill()  # SIGKILL the holder mid-stream
    time.sleep(1.0)
    daemons[first].start()
    wait_for(lambda: holder() not in ("", first), timeout_s=30, what="the other instance takes over")
    second = holder()
    frozen.add(second)
    daemons[second].proc.send_signal(signal.SIGSTOP)  # the new holder freezes for two leases
    time.sleep(6.5)
    daemons[second].proc.send_signal(signal.SIGCONT)
    frozen.discard(second)
    assert done.wait(120), "queueing did not finish"
    sender.join(5)
    assert len(ids) == len(texts) and len(set(ids)) == len(texts)
    health = daemons[holder()].get("/api/whatsapp/accounts/race/health")[1]
    assert health["leaseEpoch"] >= 3  # held by i1, then i2, then i1 again (at least)

    def all_sent():
        owner = daemons[holder()] if holder() else one
        return all(item(owner, i)["status"] == "sent" for i in ids)

    try:
        wait_for(all_sent, timeout_s=60, what="every race message sent")
    except AssertionError as exc:  # say which items, in what state, and what the instances logged
        owner = daemons[holder()] if holder() else one
        states = [(i, item(owner, i)) for i in ids]
        unsent = [(i, s["status"], s.get("error"), s.get("attempts"), s.get("nextAttemptAtMs")) for i, s in states
                  if s["status"] != "sent"]
        tails = "\n".join(f"--- {name}\n{d.tail(6000)}" for name, d in daemons.items())
        raise AssertionError(f"{exc}: not sent {unsent}\n{tails}") from None
    reached = [m["text"] for m in sent_by_clients(sim, RACE_PHONE)]
    assert sorted(reached) == sorted(texts)  # each exactly once
    assert stats(sim, RACE_PHONE)["sent"] - before["sent"] == len(texts)
    for d in daemons.values():
        assert d.stop() == 0
