"""What `System.start` sets for the whole daemon process (runtime/daemon.py)."""
from __future__ import annotations

import sys

import pytest

from systemrig import SystemRig
from wasync.runtime.daemon import GIL_SWITCH_INTERVAL_S


def test_the_daemon_shortens_the_interpreter_lock_switch_interval(tmp_path):
    """A live message crosses several threads (transport, account, writer) while history is
    being turned into messages; at each it may wait up to the switch interval."""
    assert GIL_SWITCH_INTERVAL_S < 0.005
    sys.setswitchinterval(before := 0.005)  # Python's default
    rig = SystemRig(tmp_path).start()
    try:
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
    finally:
        rig.stop()
    assert sys.getswitchinterval() == before  # given back: a process that stops one system runs on
