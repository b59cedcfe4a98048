"""A scripted transport for supervisor and actor tests that need sessions to misbehave
on cue (start failing, stopping slowly) without any network. What its sessions deliver
are real neonize events built by the simulator's builders, through the real sink (the
spool append), exactly as a transport would; the end-to-end tests use the simulator."""
from __future__ import annotations

import threading
from collections import Counter
from typing import Optional

from wasync.runtime.sim import protobufs as pb
from wasync.runtime.transport.session import Capabilities, SessionError


class ScriptedSession:
    capabilities = Capabilities(on_demand_history=False, pair_phone=True)

    def __init__(self, transport: "ScriptedTransport", account_id: str, phone: Optional[str], sink):
        self.transport, self.account_id, self.phone, self.sink = transport, account_id, phone, sink
        self.failure: Optional[BaseException] = None
        self.stopped = threading.Event()

    def start(self) -> None:
        if self.account_id in self.transport.connect_on_start:
            self.emit(pb.connected_event())

    def emit(self, event) -> None:
        """Deliver a neonize event (message, receipt, Connected, ...) as the transport would."""
        self.sink(*pb.wire(event))

    def stop(self) -> None:
        gate = self.transport.slow_stop.get(self.account_id)
        if gate is not None:
            gate.wait(20)  # "takes 20 s to stop", unless the test lets it go sooner
        self.stopped.set()

    def pair_phone(self, phone: str) -> str:
        gate = self.transport.slow_pairing
        if gate is not None:
            gate.wait(75)
        return "ABCD1234"

    def send_text(self, to_jid, text, timeout_s=30.0):
        raise SessionError("not scripted")

    def mark_read(self, *args) -> None:
        pass

    def request_history(self, *args) -> None:
        raise SessionError("not scripted")

    def logout(self) -> None:
        pass


class ScriptedTransport:
    """SessionFactory. `failing` accounts cannot start; `slow_stop[account]` is an Event
    their sessions' stop() waits on; accounts in `connect_on_start` say Connected at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.opened: Counter[str] = Counter()
        self.forgotten: list[str] = []
        self.sessions: dict[str, ScriptedSession] = {}  # the newest per account
        self.failing: set[str] = set()
        self.slow_stop: dict[str, threading.Event] = {}
        self.slow_pairing: Optional[threading.Event] = None
        self.connect_on_start: set[str] = set()

    def open(self, account_id: str, phone: Optional[str], sink) -> ScriptedSession:
        with self.lock:
            self.opened[account_id] += 1
            if account_id in self.failing:
                raise RuntimeError("no transport in this build")
            session = self.sessions[account_id] = ScriptedSession(self, account_id, phone, sink)
        return session

    def forget(self, account_id: str) -> None:
        with self.lock:
            self.forgotten.append(account_id)

    def release(self) -> None:
        """Let every slow stop and slow pairing finish (test teardown)."""
        for gate in self.slow_stop.values():
            gate.set()
        if self.slow_pairing is not None:
            self.slow_pairing.set()
