"""Logs for operators (SPEC §6): `[tag] accountId=…` lines, LOG_FORMAT=json for journald and
Loki, and no flood: per-event and per-request lines at debug, one summary per account per
period at info."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

from systemrig import SystemRig
from wasync.actors.account import SUMMARY_EVERY_S
from wasync.runtime.logs import JsonFormatter
from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim.worldmodel import WorldMessage

PHONE, ALICE = "15550001111", "15552223333@s.whatsapp.net"


def test_json_lines_carry_the_tag_and_the_figures():
    record = logging.LogRecord("wasync.leases", logging.INFO, __file__, 1,
                               "[lease] accountId=%s acquired epoch=%d (free)", ("a1", 3), None)
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["tag"], line["accountId"], line["epoch"]) == (
        "info", "wasync.leases", "lease", "a1", "3")
    assert line["msg"] == "[lease] accountId=a1 acquired epoch=3 (free)" and line["ts"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exc"]


def test_log_format_json_from_the_settings():
    code = ("from wasync.runtime.config import load; from wasync.runtime.logs import setup_logging; import logging; "
            "s = load({'LOG_FORMAT': 'json'}); setup_logging(s.log_level, s.log_format); "
            "logging.getLogger('wasync.outbox').info('[outbox] accountId=a1 item=X sent'); "
            "logging.getLogger('wasync.x').debug('hidden at info')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    lines = [json.loads(line) for line in err.splitlines()]
    assert [(entry["tag"], entry["accountId"], entry["item"]) for entry in lines] == [("outbox", "a1", "X")]
    bad = subprocess.run([sys.executable, "-m", "wasync.runtime.cli", "config"], capture_output=True, text=True,
                         env={"LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"})
    assert bad.returncode != 0 and "LOG_FORMAT" in bad.stderr


def test_one_summary_per_account_and_period_not_a_line_per_drain(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="wasync.account")
    rig = SystemRig(tmp_path, [("a1", PHONE), ("quiet", "15550002222")]).start()
    try:
        rig.transport.connect_on_start.update({"a1", "quiet"})
        rig.advance(0.5)
        session = rig.transport.sessions["a1"]
        for n in range(5):
            session.emit(pb.message_event(PHONE, ALICE, WorldMessage(id=f"L{n}", from_me=False, ts=1763900100 + n,
                                                                     type="text", text="hello")))
            rig.settle()
        assert not [r for r in caplog.records if "real=" in r.getMessage()]  # per drain: debug only
        rig.advance(SUMMARY_EVERY_S)
        summaries = [r.getMessage() for r in caplog.records if " summary " in r.getMessage()]
        assert summaries == [f"[realtime] accountId=a1 summary real=5 protocol=0 periodS={SUMMARY_EVERY_S} "
                             "connected=True"]
        rig.advance(SUMMARY_EVERY_S)  # nothing new: nothing said
        assert len([r for r in caplog.records if " summary " in r.getMessage()]) == 1
    finally:
        rig.stop()
