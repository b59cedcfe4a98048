"""The neonize transport (runtime/transport/neonize.py) without WhatsApp.

Nothing here reaches the network: events go in through the very callback goneonize calls
(the ctypes wrapper neonize builds around `Event.execute` at connect(), called with a
uuid, a pointer, a size and the event code), QR codes through neonize's own QR callback,
and every client that connects goes through a SOCKS proxy on a closed local port, so the
dial fails at once whether or not the machine is online.

The PostgreSQL tests start a throwaway cluster with initdb/pg_ctl. A machine without the
server binaries FAILS them, on purpose: CI must install Debian's `postgresql` package.
"""
from __future__ import annotations

import ctypes
import glob
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from neonize._binder import func_callback_bytes, func_string
from neonize.events import EVENT_TO_INT
from neonize.proto import Neonize_pb2 as npb

from wasync.runtime import model as m
from wasync.runtime.config import load as load_settings
from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim.worldmodel import Chat, WorldMessage
from wasync.runtime.transport import neonize_support as support
from wasync.runtime.transport.neonize import NeonizeTransport, device_props
from wasync.runtime.transport.normalize import EVENT_KINDS, normalize
from wasync.runtime.transport.session import (
    CapabilityAbsent, HistoryDirection, InvalidRecipient, MessageRef, NotConnected, RateLimited, SessionError,
)

PHONE = "15550001111"
ALICE = "15552223333@s.whatsapp.net"
TS = 1_763_900_000
CLOSED_PROXY = "socks5://127.0.0.1:9"  # discard port: nothing listens, the dial fails at once


class Sink:
    def __init__(self):
        self.events: list[tuple[str, bytes]] = []
        self.refuse = False
        self.lock = threading.Lock()

    def __call__(self, kind: str, raw: bytes) -> None:
        if self.refuse:
            raise OSError("disk full (test)")
        with self.lock:
            self.events.append((kind, raw))

    def kinds(self) -> list[str]:
        with self.lock:
            return [kind for kind, _ in self.events]


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def dispatch(session, event) -> bytes:
    """What goneonize does with each event: call the callback neonize hands it."""
    raw = event.SerializeToString()
    client = session._run.client
    callback = func_callback_bytes(client.event.execute)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    callback(client.uuid, ctypes.addressof(buffer), len(raw), EVENT_TO_INT[type(event)])
    return raw


def show_qr(session, code: bytes) -> None:
    """What goneonize does with each QR code: neonize's own QR callback, through ctypes."""
    client = session._run.client
    callback = func_string(client._NewClient__onQr)
    text = ctypes.create_string_buffer(code)
    callback(None, ctypes.addressof(text))


def events_by_kind() -> dict:
    msg = WorldMessage(id="M1", ts=TS, text="hello")
    info = pb.message_event(PHONE, ALICE, msg).Info
    fail_mode = npb.UndecryptableMessage.DESCRIPTOR.fields_by_name["DecryptFailMode"].enum_type
    return {
        "Message": pb.message_event(PHONE, ALICE, msg),
        "HistorySync": pb.history_sync_event(PHONE, "INITIAL_BOOTSTRAP", [(Chat(jid=ALICE, name="Alice"), [msg])]),
        "Receipt": pb.receipt_event(PHONE, ALICE, ["M0"], "read", TS),
        "Connected": pb.connected_event(),
        "Disconnected": pb.disconnected_event(),
        "LoggedOut": pb.logged_out_event("LOGGED_OUT", on_connect=True),
        "StreamReplaced": pb.stream_replaced_event(),
        "KeepAliveTimeout": pb.keepalive_timeout_event(2, TS),
        "KeepAliveRestored": pb.keepalive_restored_event(),
        "TemporaryBan": pb.temporary_ban_event("SEND_TO_TOO_MANY_PEOPLE", 3600),
        "ConnectFailure": npb.ConnectFailure(
            Reason=npb.SERVICE_UNAVAILABLE, Message="service unavailable",
            Raw=npb.Node(Tag="failure", Attrs=[npb.NodeAttrs(name="reason", text="503")])),
        "OfflineSyncCompleted": pb.offline_sync_completed_event(3),
        "PairStatus": pb.pair_status_event(True, f"{PHONE}:12@s.whatsapp.net", business_name="Shop"),
        "UndecryptableMessage": npb.UndecryptableMessage(
            Info=info, IsUnavailable=False, DecryptFailMode=fail_mode.values_by_name["DECRYPT_FAIL_SHOW"].number),
    }


@pytest.fixture
def transport(tmp_path):
    t = NeonizeTransport(tmp_path / "sessions", proxy=CLOSED_PROXY, registration_window_s=0.5,
                         settle_wait_s=5.0, stop_timeout_s=5.0)
    yield t
    t.close()


@pytest.fixture
def session(transport):
    s = transport.open("acct-1", PHONE, Sink())
    yield s
    s.stop()


# --- events ----------------------------------------------------------------------------


def test_one_handler_for_each_event_kind_the_pipeline_consumes(session):
    assert set(events_by_kind()) == set(EVENT_KINDS) - {"QR"}
    registered = set(session._run.client.event.list_func)
    assert registered == {EVENT_TO_INT[getattr(npb, kind)] for kind in events_by_kind()}
    assert EVENT_TO_INT[npb.QR] not in registered  # neonize's QR event comes only after pairing


@pytest.mark.parametrize("kind", sorted(set(EVENT_KINDS) - {"QR"}))
def test_each_event_reaches_the_sink_unchanged(session, kind):
    event = events_by_kind()[kind]
    raw = dispatch(session, event)
    assert session.sink.events == [(kind, raw)]
    (normalized,) = normalize("acct-1", kind, raw)
    assert not isinstance(normalized, m.Ignored)


def test_qr_codes_are_published_as_qr_events(session):
    show_qr(session, b"2@first,ref")
    show_qr(session, b"2@second,ref")
    assert session.sink.kinds() == ["QR", "QR"]
    assert [normalize("acct-1", k, raw)[0].codes for k, raw in session.sink.events] == [("2@first,ref",),
                                                                                         ("2@second,ref",)]


def test_a_refusing_sink_is_logged_and_never_raised_into_go(session, caplog):
    session.sink.refuse = True
    dispatch(session, pb.connected_event())  # would raise through ctypes if it escaped
    show_qr(session, b"2@code")
    assert session.dropped_events == 2
    assert "spool refused a Connected event" in caplog.text
    session.sink.refuse = False
    dispatch(session, pb.disconnected_event())
    assert session.sink.kinds() == ["Disconnected"]


def test_connection_flags_follow_the_events(session):
    dispatch(session, pb.connected_event())
    assert session.connected
    dispatch(session, pb.disconnected_event())
    assert not session.connected
    dispatch(session, pb.pair_status_event(True, f"{PHONE}:12@s.whatsapp.net"))
    assert support.jid_text(session.device_jid) == f"{PHONE}:12@s.whatsapp.net"


def test_stream_replaced_is_appended_then_the_client_is_stopped_for_good(session):
    client = session._run.client
    raw = dispatch(session, pb.stream_replaced_event())
    assert session.sink.events == [("StreamReplaced", raw)] and session.stream_replaced
    wait_for(lambda: not client._stop_finalizer.alive)  # Go's Stop ran: the client cannot reconnect
    assert session._run.halt_reason == "stream_replaced"
    with pytest.raises(NotConnected):
        session.send_text(ALICE, "hi")


# --- life cycle ------------------------------------------------------------------------


def test_a_failed_connect_is_reported_through_the_sink(session):
    first = session._run.client.uuid
    session.start()
    wait_for(lambda: "Disconnected" in session.sink.kinds())
    assert session.sink.kinds() == ["ConnectFailure", "Disconnected"]
    failure = normalize("acct-1", *session.sink.events[0])[0]
    assert failure == m.ConnectFailure("acct-1", reason="GENERIC", message=failure.message)
    assert "127.0.0.1:9" in failure.message and session.failure is not None
    started = time.monotonic()
    session.stop()
    session.stop()  # idempotent
    assert time.monotonic() - started < 2
    session.start()  # a restart gets a new client
    assert session._run.client.uuid != first
    wait_for(lambda: session.sink.kinds().count("Disconnected") == 2)


def test_stop_without_start_and_twice(session):
    session.stop()
    session.stop()
    assert not session._run.client._stop_finalizer.alive


def _hold_connect(session, *, show_qr_code: bool):
    """Stand-in for neonize's connect() stuck before goneonize's event loop: dialling, or
    showing QR codes. Returns (release, disconnects)."""
    client = session._run.client
    release, disconnects = threading.Event(), []

    def connect(proxy_settings=None):
        if show_qr_code:
            client.event._qr(client, b"2@code")
        release.wait()

    client.connect = connect
    client.disconnect = lambda: disconnects.append(True)
    return release, disconnects


def test_a_client_showing_qr_codes_is_stopped_only_once_its_event_loop_runs(session):
    """Go's Stop before goneonize's event loop would kill the process (the loop reads the
    client Stop deleted): until then a halted client is only disconnected."""
    client = session._run.client
    release, disconnects = _hold_connect(session, show_qr_code=True)
    session.start()
    wait_for(lambda: session.sink.kinds() == ["QR"])
    stopper = threading.Thread(target=session.stop)
    stopper.start()
    wait_for(lambda: disconnects == [True])
    time.sleep(0.2)
    assert client._stop_finalizer.alive  # no Stop while it shows QR codes
    dispatch(session, pb.pair_status_event(True, f"{PHONE}:12@s.whatsapp.net"))  # scanned just in time
    wait_for(lambda: not client._stop_finalizer.alive)
    release.set()
    stopper.join(5)
    assert not stopper.is_alive()


def test_a_dialling_client_is_stopped_once_goneonize_sends_me(session):
    client = session._run.client
    release, disconnects = _hold_connect(session, show_qr_code=False)
    session.start()
    session._run.settle()  # as if Go had registered it
    stopper = threading.Thread(target=session.stop)
    stopper.start()
    wait_for(lambda: disconnects == [True])
    time.sleep(0.2)
    assert client._stop_finalizer.alive
    client.me = npb.Device()  # what neonize does with goneonize's first event-loop callback
    wait_for(lambda: not client._stop_finalizer.alive)
    release.set()
    stopper.join(5)
    assert not stopper.is_alive() and session.sink.events == []  # asked for: no failure reported


def run_python(script: str, timeout_s: float = 20.0, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def prologue(sessions) -> str:
    return f"""
    import logging, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from wasync.runtime.transport.neonize import NeonizeTransport
    events = []
    transport = NeonizeTransport({str(sessions)!r}, proxy={CLOSED_PROXY!r}, settle_wait_s=1.0, stop_timeout_s=1.0)
    """


def test_a_process_that_started_and_stopped_a_session_exits(tmp_path):
    started = time.monotonic()
    result = run_python(prologue(tmp_path) + """
    session = transport.open("acct-1", None, lambda kind, raw: events.append(kind))
    session.start()
    while "Disconnected" not in events:
        time.sleep(0.01)
    session.stop()
    idle = transport.open("acct-2", None, lambda kind, raw: None)  # made, never started nor stopped
    print(events)
    """)
    assert result.returncode == 0, result.stderr
    assert "['ConnectFailure', 'Disconnected']" in result.stdout
    assert time.monotonic() - started < 10


def test_many_sessions_started_at_once(tmp_path):
    """Registrations take turns (goneonize's client maps have no lock); in a process of its
    own, since a Go map race would abort it."""
    result = run_python(prologue(tmp_path) + """
    import threading
    from collections import Counter
    sessions = [transport.open(f"acct-{n}", None, lambda kind, raw: events.append(kind)) for n in range(24)]
    starters = [threading.Thread(target=s.start) for s in sessions]
    [t.start() for t in starters]
    [t.join() for t in starters]
    while events.count("Disconnected") < len(sessions):
        time.sleep(0.01)
    transport.close()
    print(sorted(Counter(events).items()))
    """, timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[('ConnectFailure', 24), ('Disconnected', 24)]"


def test_a_process_exits_even_when_neonize_is_stuck_in_go(tmp_path):
    """neonize 0.5.2 never returns from connect() for a device that never paired once its
    QR codes have run out (Go waits for an ID that never comes; Stop cannot interrupt
    it), on a NON-daemon worker thread. Reproduced here with the same thread shape."""
    stuck = prologue(tmp_path) + """
    import threading
    from neonize.client import NewClient
    def stuck_connect(self, proxy_settings=None):
        forever = threading.Event()
        worker = threading.Thread(target=forever.wait, name=self.uuid.decode(), daemon=False)
        worker.start()
        self.event._qr(self, b"2@code")  # it got as far as showing QR codes
        worker.join()
    NewClient.connect = stuck_connect
    PATCH
    session = transport.open("acct-1", None, lambda kind, raw: events.append(kind))
    session.start()
    while "QR" not in events:
        time.sleep(0.01)
    session.stop()
    print("stopped")
    """
    started = time.monotonic()
    result = run_python(stuck.replace("PATCH", ""))
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout and "1 worker thread(s) left behind" in result.stderr
    assert time.monotonic() - started < 10
    # The control: without taking the worker off the exit wait, the same process hangs.
    control = stuck.replace("PATCH", "import wasync.runtime.transport.neonize as t; t.release_stuck_thread = lambda n: 0")
    with pytest.raises(subprocess.TimeoutExpired):
        run_python(control, timeout_s=4)


def test_prepare_neonize_environment_says_whether_go_will_see_the_bot_tag():
    script = """
    import os
    from wasync.runtime.config import prepare_neonize_environment
    print(prepare_neonize_environment(), os.environ["NEONIZE_BOT_TAG"])
    """
    env = {k: v for k, v in os.environ.items() if k != "NEONIZE_BOT_TAG"}
    assert run_python(script, env=env).stdout.split() == ["False", "off"]
    assert run_python(script, env={**env, "NEONIZE_BOT_TAG": "off"}).stdout.split() == ["True", "off"]
    assert run_python(script, env={**env, "NEONIZE_BOT_TAG": "on"}).stdout.split() == ["False", "on"]


# --- calls ---------------------------------------------------------------------------


def test_calls_need_a_live_client(session):
    with pytest.raises(NotConnected):
        session.send_text(ALICE, "hi")
    with pytest.raises(NotConnected):
        session.mark_read(ALICE, None, ["M1"], TS * 1000)
    with pytest.raises(NotConnected):
        session.logout()
    with pytest.raises(NotConnected):
        session.pair_phone("+1 555 000 1111")
    with pytest.raises(InvalidRecipient):
        session.send_text("not a jid", "hi")
    with pytest.raises(InvalidRecipient):
        session.send_text("123@example.com", "hi")


def test_on_demand_history_is_absent_in_neonize_0_5_2(session):
    caps = session.capabilities
    assert caps.on_demand_history is False and caps.pair_phone is True and caps.history_after is False
    with pytest.raises(CapabilityAbsent):
        session.request_history(ALICE, MessageRef("M1", TS * 1000, False), 20)


def _force_live(session):
    """As if the client were connected: goneonize's event loop runs."""
    run = session._run
    run.settled.set()
    run.accepting = run.delivering = True


@pytest.mark.parametrize("api", ["request_history_sync", "send_peer_message"])
def test_a_later_neonize_history_api_is_used_not_faked(session, api):
    calls = []
    setattr(session._run.client, api, lambda *args: calls.append(args))
    assert session.capabilities.on_demand_history is True and session.capabilities.history_after is False
    anchor = MessageRef("M1", TS * 1000, True)
    with pytest.raises(NotConnected):  # still needs a live client
        session.request_history(ALICE, anchor, 20)
    _force_live(session)
    with pytest.raises(CapabilityAbsent):  # WhatsApp's request only has an oldest-message anchor
        session.request_history(ALICE, anchor, 20, HistoryDirection.AFTER)
    session.request_history(ALICE, anchor, 20)
    if api == "request_history_sync":
        ((info, count),) = calls
        assert (info.ID, info.Timestamp, info.MessageSource.IsFromMe, count) == ("M1", TS * 1000, True, 20)
        assert support.jid_text(info.MessageSource.Chat) == ALICE
    else:
        ((message,),) = calls
        request = message.protocolMessage.peerDataOperationRequestMessage.historySyncOnDemandRequest
        assert (request.chatJID, request.oldestMsgID, request.oldestMsgTimestampMS, request.onDemandMsgCount) == (
            ALICE, "M1", TS * 1000, 20)


def test_send_text_sends_a_plain_conversation(session):
    sent = []

    def send_message(to, message):
        sent.append((support.jid_text(to), message))
        return npb.SendResponse(ID="3EB0ABC", Timestamp=TS, ServerID=0, DebugTimings=npb.MessageDebugTimings())

    session._run.client.send_message = send_message
    _force_live(session)
    result = session.send_text(ALICE, "hello")
    ((to, message),) = sent
    assert to == ALICE
    assert [(field.name, value) for field, value in message.ListFields()] == [("conversation", "hello")]
    assert (result.message_id, result.ts_ms) == ("3EB0ABC", TS * 1000)


def test_mark_read_pair_phone_and_logout_reach_neonize(session):
    calls = []
    client = session._run.client
    client.mark_read = lambda *ids, **kw: calls.append(("mark_read", ids, support.jid_text(kw["chat"]),
                                                        kw["sender"].IsEmpty, kw["timestamp"]))
    client.PairPhone = lambda phone, push, **kw: calls.append(("pair", phone, push)) or "ABCD-EFGH"
    client.logout = lambda: calls.append(("logout",))
    session._run.qr_phase = session._run.accepting = True  # showing QR codes
    assert session.pair_phone("+1 555 000 1111") == "ABCD-EFGH"
    _force_live(session)
    dispatch(session, pb.connected_event())
    with pytest.raises(SessionError):
        session.pair_phone(PHONE)  # only while pairing
    session.mark_read(ALICE, None, ["M1", "M2"], TS * 1000 + 999)
    session.logout()
    assert calls == [("pair", "15550001111", True), ("mark_read", ("M1", "M2"), ALICE, True, TS), ("logout",)]
    assert session.sink.kinds() == ["Connected", "LoggedOut"]  # whatsmeow emits none for a logout we asked for
    assert normalize("acct-1", *session.sink.events[-1]) == [m.LoggedOut("acct-1", reason="LOGGED_OUT")]
    assert not client._stop_finalizer.alive
    with pytest.raises(NotConnected):
        session.mark_read(ALICE, None, ["M3"], TS * 1000)


def test_go_errors_become_typed_errors():
    cases = {
        "websocket not connected": NotConnected,
        "the store doesn't contain a device JID": NotConnected,
        "info query returned status 429: rate-overlimit": RateLimited,
        "can't send message to unknown server": InvalidRecipient,
        "message recipient must be normal (non-AD) JID": InvalidRecipient,
        "failed to get device list: something odd": SessionError,
    }
    for text, expected in cases.items():
        assert type(support.translate_error("send", RuntimeError(text))) is expected, text


def test_timestamps_of_any_unit_become_milliseconds():
    assert support.timestamp_ms(TS) == TS * 1000
    assert support.timestamp_ms(TS * 1000 + 5) == TS * 1000 + 5
    assert support.timestamp_ms(TS * 10**9) == TS * 1000
    assert support.timestamp_ms(-62135596800, now_ms=42) == 42


def test_jids():
    assert support.jid_text(support.parse_jid("15550001111:12@s.whatsapp.net")) == "15550001111:12@s.whatsapp.net"
    assert support.parse_jid("120363000000000001@g.us").Server == "g.us"
    assert support.parse_jid("123456789012345@lid").User == "123456789012345"
    for bad in ("", "15550001111", "@s.whatsapp.net", "a@b@c", "x@example.org"):
        with pytest.raises(InvalidRecipient):
            support.parse_jid(bad)


def test_full_history_device_props():
    full = device_props(True)
    assert full.requireFullSync and full.historySyncConfig.fullSyncDaysLimit == 3650
    assert full.historySyncConfig.fullSyncSizeMbLimit == 102400
    assert full.platformType == full.DESKTOP
    assert device_props(False).requireFullSync is False and not device_props(False).HasField("historySyncConfig")
    sized = device_props(True, days=365, size_mb=2048).historySyncConfig
    assert (sized.fullSyncDaysLimit, sized.fullSyncSizeMbLimit) == (365, 2048)
    assert not device_props(False, days=365, size_mb=2048).HasField("historySyncConfig")  # full sync only


def test_history_sync_settings_reach_the_pairing_props(tmp_path):
    settings = load_settings({"SESSIONS_PATH": str(tmp_path), "WHATSAPP_HISTORY_SYNC_DAYS": "730",
                              "WHATSAPP_HISTORY_SYNC_SIZE_MB": "4096"})
    transport = NeonizeTransport.from_settings(settings)
    try:
        config = transport.props.historySyncConfig
        assert transport.props.requireFullSync and (config.fullSyncDaysLimit, config.fullSyncSizeMbLimit) == (730, 4096)
    finally:
        transport.close()


def test_one_sqlite_file_per_account(transport, tmp_path):
    name, device, new_device = transport.store_for(transport.open("acct-1", PHONE, Sink()))
    assert (name, device, new_device) == (str(tmp_path / "sessions" / "acct-1.sqlite3"), None, False)
    odd = transport.open("shop?#1/x", None, Sink())
    assert Path(transport.store_for(odd)[0]).parent == tmp_path / "sessions"
    assert support.safe_file_stem("shop?#1/x") != support.safe_file_stem("shop_1_x")


# --- PostgreSQL (SESSIONS_DSN) ----------------------------------------------------------------


def _pg_bindir() -> Path:
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "postgres").exists():
            return bindir
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install Debian's "
                "`postgresql` package: apt-get install -y postgresql")


class PgCluster:
    """A throwaway PostgreSQL cluster in a temp dir on a free port. Postgres refuses to run
    as root, so as root the server runs as the `postgres` user (runuser)."""

    def __init__(self):
        self.bindir = _pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="wasync-pg-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres")  # the Debian package creates the user

    def _server(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.root:
            runuser = shutil.which("runuser") or next(
                (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None)
            command = ([runuser, "-u", "postgres", "--", *command] if runuser
                       else ["su", "-s", "/bin/sh", "postgres", "-c", shlex.join(command)])
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{shlex.join(command)}: {done.stdout}{done.stderr}"

    def start(self) -> "PgCluster":
        data = self.dir / "data"
        try:
            self._server("initdb", "-D", str(data), "-A", "trust", "-U", "wasync", "-E", "UTF8", "--no-sync")
            self._server("pg_ctl", "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", "60", "-o",
                         f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def stop(self) -> None:
        try:
            self._server("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def sql(self, query: str, database: str = "postgres") -> str:
        psql = self.bindir / "psql" if (self.bindir / "psql").exists() else "psql"
        done = subprocess.run([str(psql), "-h", "127.0.0.1", "-p", str(self.port), "-U", "wasync", "-d", database,
                               "-v", "ON_ERROR_STOP=1", "-Atc", query], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def dsn(self, database: str) -> str:
        return f"postgres://wasync@127.0.0.1:{self.port}/{database}?sslmode=disable"


@pytest.fixture(scope="module")
def pg():
    cluster = PgCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_dsn(pg, request):
    database = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50]
    pg.sql(f"CREATE DATABASE {database}")
    return pg.dsn(database)


def _insert_device(pg, database: str, jid: str, push_name: str) -> None:
    key32, sig64 = "decode(repeat('01', 32), 'hex')", "decode(repeat('02', 64), 'hex')"
    pg.sql(f"""INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key,
        signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig, adv_account_sig_key,
        adv_device_sig, platform, business_name, push_name)
        VALUES ('{jid}', 1, {key32}, {key32}, {key32}, 1, {sig64}, {key32}, '\\x00', {sig64}, {key32}, {sig64},
        'android', '', '{push_name}')""", database)


def test_postgres_store_gets_neonize_tables_and_a_client(pg, pg_dsn, tmp_path):
    transport = NeonizeTransport(tmp_path, pg_dsn, proxy=CLOSED_PROXY)
    session = transport.open("acct-1", PHONE, Sink())
    database = pg_dsn.rsplit("/", 1)[1].split("?")[0]
    tables = set(pg.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database).split())
    assert {"whatsmeow_device", "whatsmeow_sessions", "whatsmeow_identity_keys"} <= tables
    assert session._run.client.name == pg_dsn + "&connect_timeout=10"
    assert session._run.client.jid is None and session._run.client.new_device  # no device yet: pair a new one
    transport.close()


def test_postgres_points_each_account_at_its_own_device(pg, pg_dsn, tmp_path):
    database = pg_dsn.rsplit("/", 1)[1].split("?")[0]
    assert support.list_device_jids(pg_dsn) == []  # creates the tables
    _insert_device(pg, database, f"{PHONE}:7@s.whatsapp.net", "Shop, Inc.")  # a comma breaks neonize's parser
    _insert_device(pg, database, "15559990000:3@s.whatsapp.net", "Other")
    transport = NeonizeTransport(tmp_path, pg_dsn)
    mine = transport.open("acct-1", "+" + PHONE, Sink())._run.client
    assert support.jid_text(mine.jid) == f"{PHONE}:7@s.whatsapp.net" and not mine.new_device
    fresh = transport.open("acct-2", "15551112222", Sink())._run.client
    assert fresh.jid is None and fresh.new_device  # never the first stored device: that is someone else's
    transport.close()


def test_postgres_session_connects_through_the_shared_store(pg, pg_dsn, tmp_path):
    database = pg_dsn.rsplit("/", 1)[1].split("?")[0]
    support.list_device_jids(pg_dsn)
    _insert_device(pg, database, f"{PHONE}:7@s.whatsapp.net", "Shop")
    # In a process of its own: were the device not found, Go would abort the process.
    result = run_python(f"""
    import sys, time
    from neonize.proto.Neonize_pb2 import ConnectFailure
    from wasync.runtime.transport.neonize import NeonizeTransport
    events = []
    transport = NeonizeTransport({str(tmp_path)!r}, {pg_dsn!r}, proxy={CLOSED_PROXY!r}, stop_timeout_s=2.0)
    for account, phone in (("acct-1", {PHONE!r}), ("acct-2", None)):
        session = transport.open(account, phone, lambda kind, raw: events.append((kind, raw)))
        session.start()
        while "Disconnected" not in [kind for kind, _ in events]:
            time.sleep(0.01)
        session.stop()
        failure = ConnectFailure.FromString(events[0][1]).Message
        print(account, [kind for kind, _ in events], failure.replace(chr(10), " "))
        events.clear()
    """, timeout_s=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["acct-1", "acct-2"]
    for line in lines:
        assert "['ConnectFailure', 'Disconnected']" in line and "127.0.0.1:9" in line  # the store was fine
    assert pg.sql("SELECT count(*) FROM whatsmeow_device", database) == "1"  # nothing paired, nothing added


def test_forget_moves_the_session_file_aside_for_a_new_pairing(transport, tmp_path):
    sessions = tmp_path / "sessions"
    sessions.mkdir(exist_ok=True)
    (sessions / "acct-9.sqlite3").write_bytes(b"old device keys")
    transport.forget("acct-9")
    assert not (sessions / "acct-9.sqlite3").exists()
    (aside,) = sessions.glob("acct-9.sqlite3.replaced-*")
    assert aside.read_bytes() == b"old device keys"  # kept for forensics, never deleted
    transport.forget("acct-9")  # nothing to move: no error
    transport.forget("never-paired")
