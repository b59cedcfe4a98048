"""The README's read-and-send commands, run as written (only the port changes) against a
real daemon and simulator on the demo world: an example that no longer works fails here."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from daemonproc import ROOT, DaemonProcess
from simproc import SimProcess, wait_for

pytestmark = pytest.mark.slow

MARKER = "<!-- readme-test"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index(MARKER):]
    body = block[block.index("```") + 3:]
    body = body[:body.index("```")]
    commands, current = [], ""
    for line in body.strip("\n").splitlines():
        current += line + "\n" if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def test_the_read_and_send_examples_work_as_pasted(tmp_path):
    commands = readme_commands()
    assert len(commands) >= 5 and all(c.startswith("curl ") for c in commands)
    sim = SimProcess(ROOT / "examples" / "demo.json", tmp_path / "sim", speed=1).start()
    daemon = DaemonProcess(tmp_path / "daemon", {"WASYNC_TRANSPORT": sim.address}).start()
    try:
        assert daemon.request("POST", "/api/whatsapp/accounts", {"accountId": "shopA", "phone": "15550001111"})[0] == 201
        wait_for(lambda: daemon.get("/api/whatsapp/threads/shopA?limit=3")[1]["threads"], timeout_s=30,
                 what="shopA's history stored")
        for command in commands:
            run = subprocess.run(["bash", "-c", command.replace("localhost:8080", f"localhost:{daemon.port}")],
                                 capture_output=True, text=True, timeout=30)
            assert run.returncode == 0, (command, run.stderr)
            answer = json.loads(run.stdout)
            assert answer["success"] is True, (command, answer)
            if "send-message" in command:
                item_id = answer["outbox"]["id"]
        wait_for(lambda: daemon.get(f"/api/whatsapp/outbox/items/{item_id}")[1]["item"]["status"] == "sent",
                 what="the README's message sent")
        phone = next(a for a in sim.world()["accounts"] if a["phone"] == "15550001111")
        sent = [m for c in phone["chats"] for m in c["messages"] if m.get("text") == "Your cake is ready"]
        assert [m["via"] for m in sent] == ["sent"]
        # The comments promise: the second threads page differs from the first.
        first, second = (json.loads(subprocess.run(["bash", "-c", re.sub(r"\s+#.*", "", c).replace(
            "localhost:8080", f"localhost:{daemon.port}")], capture_output=True, text=True).stdout)["threads"]
            for c in commands[:2])
        assert first and second and {t["threadId"] if "threadId" in t else t["clientJid"] for t in first}.isdisjoint(
            t["threadId"] if "threadId" in t else t["clientJid"] for t in second)
    finally:
        assert daemon.stop() == 0
        sim.stop()
