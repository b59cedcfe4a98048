"""The Session port over neonize 0.5.2: real WhatsApp through whatsmeow (Go).

Decisions (reviewers take note; the Go-side reasons are in neonize_support.py):

- Session store. SQLite: one file per account, `{SESSIONS_PATH}/{account_id}.sqlite3`,
  holding that account's one device. PostgreSQL (`SESSIONS_DSN`): one shared whatsmeow
  container holds every account's device, keyed by device JID; a client is pointed at
  its device explicitly: the stored device whose phone is the account's (listed when the
  client is made), or the one this session just paired; none means a fresh device
  (pairing). Never "the first stored device": that is another account's. lib/pq's
  `connect_timeout=10` is added to the DSN unless it has one.
- Full history: see `device_props` (pairing payload only; no effect on paired devices).
  goneonize merges it into whatsmeow's process-wide DeviceProps: one setting per process.
- Events. One handler per kind in normalize.EVENT_KINDS (neonize keeps one per event
  type): `sink(kind, event.SerializeToString())` and return. QR codes come through
  `client.qr` (neonize's QR event only arrives after pairing) and go to the sink as a
  serialized `QR(Codes=[code])`. A sink failure is logged and counted (`dropped_events`),
  never raised into Go: whatsmeow has acknowledged the event already.
- start() runs `connect()` on a daemon thread and returns. When `connect()` ends without
  anyone asking, the sink hears it: ConnectFailure(GENERIC, the error) if it raised, then
  Disconnected. whatsmeow reconnects by itself after a dropped socket; a failed first
  connect is left to the supervisor.
- Stopping a client. Go's `Stop` forgets the client; if `connect()` has not yet reached
  its event loop (still dialling, or showing QR codes), goneonize then dereferences the
  forgotten client and the Go panic kills the process. So `Stop` happens only once the
  event loop runs (it sends `me`, then events), or after `connect()` returned; before
  that the client is only disconnected and the Stop is left pending until then.
- Registrations take turns: a process-wide lock is held from a client's `connect()` until
  it first calls back (or 1 s, or `connect()` returns), because goneonize's client maps
  have no lock. Cold starts of many accounts go at about one per handshake.
- StreamReplaced: the handler only appends it and flags the run; the transport's watcher
  thread disconnects and stops the client, so no reconnect can follow.
- stop() is idempotent and joins the connect thread. A device that never paired and was
  showing QR codes never leaves goneonize (it waits for an ID forever once the codes run
  out): its non-daemon worker is taken off the interpreter's exit wait, and stays behind.
- logout() sends the LoggedOut event whatsmeow does not emit for a logout it was asked for.
- On-demand history: absent in neonize 0.5.2 (`history_api`); CapabilityAbsent. Never
  AFTER an anchor, whatever neonize can do (see `request_history`).
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

from wasync.runtime.config import mask, prepare_neonize_environment
from wasync.runtime.transport.neonize_support import (
    RegistrationWindow, Run, device_props, digits, empty_jid, go_stop, history_api, jid_text, list_device_jids,
    parse_jid, registry, release_stuck_thread, safe_file_stem, timestamp_ms, translate_error, with_connect_timeout,
)
from wasync.runtime.transport.session import (
    Capabilities, CapabilityAbsent, EventSink, HistoryDirection, MessageRef, NotConnected, SendResult, SessionError,
)

log = logging.getLogger("wasync.transport.neonize")

_nz: Optional[SimpleNamespace] = None
_nz_lock = threading.Lock()
_client_numbers = itertools.count(1)


def _load_neonize() -> SimpleNamespace:
    """Import neonize once, after preparing its environment (config.py says why that
    only helps when the variable was already there at process start)."""
    global _nz
    with _nz_lock:
        if _nz is None:
            if prepare_neonize_environment() is False:
                log.warning("[realtime] NEONIZE_BOT_TAG=off is not in the environment this process started "
                            "with; neonize's Go library will mark 1:1 sends as bot messages. Set it in the "
                            "service's environment.")
            from neonize._binder import ProxySettings
            from neonize.client import NewClient
            from neonize.proto import Neonize_pb2
            from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message
            from neonize.utils.enum import ClientName, ClientType, ReceiptType

            from wasync.runtime.transport.normalize import EVENT_KINDS

            _nz = SimpleNamespace(
                NewClient=NewClient, ProxySettings=ProxySettings, npb=Neonize_pb2, Message=Message,
                ReceiptType=ReceiptType, ClientType=ClientType, ClientName=ClientName,
                events={kind: getattr(Neonize_pb2, kind) for kind in EVENT_KINDS if kind != "QR"},
            )
    return _nz


class NeonizeTransport:
    """SessionFactory for real WhatsApp. Owns the watcher thread that stops clients."""

    def __init__(self, sessions_path: str | Path, sessions_dsn: Optional[str] = None, *,
                 sync_full_history: bool = True, history_sync_days: int = 3650, history_sync_size_mb: int = 102400,
                 log_level: str = "info", proxy: Optional[str] = None,
                 registration_window_s: float = 1.0, settle_wait_s: float = 15.0, stop_timeout_s: float = 10.0):
        nz = _load_neonize()
        self.sessions_path = Path(sessions_path)
        self.sessions_dsn = with_connect_timeout(sessions_dsn) if sessions_dsn else None
        self.props = device_props(sync_full_history, history_sync_days, history_sync_size_mb)
        self.proxy = nz.ProxySettings(proxy_address=proxy) if proxy else None
        self.registration_window_s = registration_window_s
        self.settle_wait_s = settle_wait_s
        self.stop_timeout_s = stop_timeout_s
        self._sessions: "weakref.WeakSet[NeonizeSession]" = weakref.WeakSet()
        self._lock = threading.Lock()
        self._watch_queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._watcher: Optional[threading.Thread] = None
        # goneonize takes its log level from this logger's own level when a client connects
        # and ships every line through a callback into Python: keep Go quiet unless debug.
        logging.getLogger("neonize.utils.log").setLevel(logging.DEBUG if log_level == "debug" else logging.WARNING)

    @classmethod
    def from_settings(cls, settings) -> "NeonizeTransport":
        return cls(settings.sessions_path, settings.sessions_dsn, sync_full_history=settings.sync_full_history,
                   history_sync_days=settings.history_sync_days, history_sync_size_mb=settings.history_sync_size_mb,
                   log_level=settings.log_level)

    def open(self, account_id: str, phone: Optional[str], sink: EventSink) -> "NeonizeSession":
        session = NeonizeSession(self, account_id, phone, sink)
        with self._lock:
            self._sessions.add(session)
        return session

    def close(self) -> None:
        """Stop every session still open, then the watcher."""
        with self._lock:
            sessions, watcher, self._watcher = list(self._sessions), self._watcher, None
        for session in sessions:
            try:
                session.stop()
            except Exception:
                log.exception("[realtime] accountId=%s session did not stop cleanly", session.account_id)
        if watcher is not None:
            self._watch_queue.put(None)
            watcher.join(timeout=self.stop_timeout_s)

    def describe_store(self) -> str:
        return mask("sessions_dsn", self.sessions_dsn) if self.sessions_dsn else str(self.sessions_path)

    def forget(self, account_id: str) -> None:
        """Make the next session of this account pair a new device (re-pair). SQLite: the
        account's session file is moved aside (kept, renamed, for forensics), not deleted.
        PostgreSQL: nothing to move; a session opened without a phone gets a fresh device
        (the old device's rows stay until it is unlinked on the phone)."""
        if self.sessions_dsn:
            return
        path = self.sessions_path / f"{safe_file_stem(account_id)}.sqlite3"
        if path.exists():
            aside = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
            path.rename(aside)
            log.warning("[realtime] accountId=%s session file moved aside to %s for a new pairing", account_id, aside)

    def store_for(self, session: "NeonizeSession") -> tuple[str, Any, bool]:
        """(database name for neonize, device JID or None, new_device) for a new client."""
        if not self.sessions_dsn:
            self.sessions_path.mkdir(parents=True, exist_ok=True)
            path = self.sessions_path / f"{safe_file_stem(session.account_id)}.sqlite3"
            return str(path), None, False  # one device per file: resume it, or make one
        device = session.device_jid
        if device is None and session.phone:
            phone = digits(session.phone)
            mine = [jid for jid in map(parse_jid, list_device_jids(self.sessions_dsn)) if jid.User == phone]
            device = max(mine, key=lambda jid: jid.Device) if mine else None
            if len(mine) > 1:
                log.warning("[realtime] accountId=%s %d devices for one phone in the session store; using %s",
                            session.account_id, len(mine), jid_text(device))
        return self.sessions_dsn, device, device is None

    def watch(self, session: "NeonizeSession", run: "Run", reason: str) -> None:
        """From the Go thread: hand a halt to the watcher thread and return."""
        self._watch_queue.put((session, run, reason))
        with self._lock:
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="neonize-watcher", daemon=True)
                self._watcher.start()

    def _watch(self) -> None:
        while True:
            item = self._watch_queue.get()
            if item is None:
                return
            session, run, reason = item
            try:
                if reason == "stream_replaced":
                    log.warning("[lease] accountId=%s StreamReplaced: stopping the client, no reconnect",
                                session.account_id)
                session.halt(run, reason)
            except Exception:
                log.exception("[realtime] accountId=%s could not stop a client", session.account_id)


class NeonizeSession:
    def __init__(self, transport: NeonizeTransport, account_id: str, phone: Optional[str], sink: EventSink):
        self.transport = transport
        self.account_id = account_id
        self.phone = phone
        self.sink = sink
        self.device_jid = None  # PostgreSQL store: the device this session paired
        self.connected = False
        self.stream_replaced = False
        self.dropped_events = 0  # events the sink refused (logged)
        self.failure: Optional[BaseException] = None  # why connect() ended, when nobody asked
        self._lock = threading.Lock()  # session and run flags
        self._call_lock = threading.Lock()  # held for each call into Go, and for Stop
        self._halt_lock = threading.Lock()  # one halt at a time
        self._stop_requested = False
        self._run = self._new_run()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(on_demand_history=history_api(self._run.client) is not None, pair_phone=True,
                            history_after=False)

    # --- life cycle ---------------------------------------------------------------------

    def _new_run(self) -> Run:
        nz = _load_neonize()
        run = Run()
        name, device, new_device = self.transport.store_for(self)
        # Unique per client: neonize's GC finalizer stops "its" uuid, which must never be a
        # later client's. (A JID given to NewClient would replace the uuid with its phone.)
        uuid = f"wasync-{self.account_id}-{next(_client_numbers)}"
        with registry():
            client = nz.NewClient(name, props=self.transport.props, uuid=uuid, new_device=new_device)
        client.jid = device
        for kind, event_class in nz.events.items():
            client.event(event_class)(self._handler(run, kind))
        client.qr(self._qr_handler(run))
        run.client = client
        log.info("[realtime] accountId=%s neonize client %s store=%s device=%s", self.account_id, uuid,
                 self.transport.describe_store(), jid_text(device) if device is not None else "new")
        return run

    def start(self) -> None:
        with self._lock:
            self._stop_requested = False
            used = self._run.thread is not None
            if used and self._run.thread.is_alive() and self._run.halt_reason is None:
                return  # already running
        if used:  # a client connects once; made outside the lock (it may list the store)
            fresh = self._new_run()
            with self._lock:
                self._run = fresh
        with self._lock:
            run = self._run
            if run.thread is not None:
                return  # a concurrent start() won
            run.accepting = True
            run.window = RegistrationWindow(self.transport.registration_window_s)
            run.thread = threading.Thread(target=self._connect, args=(run,), name=f"neonize-{self.account_id}",
                                          daemon=True)
            run.thread.start()

    def _connect(self, run: Run) -> None:
        error: Optional[BaseException] = None
        try:
            run.window.enter()
            run.client.connect(self.transport.proxy)
        except Exception as exc:
            error = exc
        finally:
            run.settle()
            with self._lock:
                run.ended = True
                expected = run.halt_reason is not None or self._stop_requested or run is not self._run
                if run is self._run:
                    self.connected = False
            if not expected:
                self.failure = error
                npb = _nz.npb
                if error is not None:
                    log.warning("[realtime] accountId=%s could not connect: %s", self.account_id, error)
                    failure = npb.ConnectFailure(Reason=npb.GENERIC, Message=str(error)[:1000], Raw=npb.Node(Tag=""))
                    self._deliver("ConnectFailure", failure.SerializeToString())
                else:
                    log.warning("[realtime] accountId=%s neonize connect() ended", self.account_id)
                self._deliver("Disconnected", npb.Disconnected(status=True).SerializeToString())
            self.halt(run, "ended")  # Go may still hold the client (it failed after registering)

    def stop(self) -> None:
        with self._lock:
            self._stop_requested = True
            run = self._run
        started = run.thread is not None
        if started and run.thread.is_alive() and not run.settled.is_set():
            run.settled.wait(self.transport.settle_wait_s)  # so the disconnect reaches a registered client
        self.halt(run, "stopped")
        if started:
            with self._lock:
                forever = run.qr_phase and not run.delivering and not run.ended
            deadline = time.monotonic() + (1.0 if forever else self.transport.stop_timeout_s)
            while run.thread.is_alive() and time.monotonic() < deadline:
                if run.stop_pending and run.client.me is not None:
                    self.halt(run, "stopped")  # goneonize reached its event loop (it sent `me`): Stop is safe now
                run.thread.join(0.05)
            if run.thread.is_alive():
                released = release_stuck_thread(run.client.uuid.decode())
                log.warning("[realtime] accountId=%s neonize's connect() did not end (%s); %d worker thread(s) "
                            "left behind", self.account_id, "a device that never paired waits in Go forever"
                            if forever else "stuck in Go", released)
        with self._lock:
            if run is self._run:
                self.connected = False

    def halt(self, run: Run, reason: str) -> None:
        """Disconnect `run`'s client and stop it in Go as soon as that is safe; no call into
        Go on it starts afterwards. Idempotent."""
        with self._halt_lock:
            with self._lock:
                run.halt_reason = run.halt_reason or reason
                run.accepting = False
                started = run.thread is not None
                # Only a client Go has (it called back): one still dialling would hold the lock.
                disconnect = started and run.settled.is_set() and not run.ended and not run.disconnected
                run.disconnected = run.disconnected or disconnect
                # `me` is the first thing goneonize sends from its event loop.
                safe = not started or run.ended or run.delivering or run.client.me is not None
                run.stop_pending = not safe
            if disconnect:
                try:  # calls in flight return at once on a closed socket; nil-safe in Go
                    with registry():
                        run.client.disconnect()
                except Exception:
                    log.debug("[realtime] accountId=%s disconnect failed", self.account_id, exc_info=True)
            if not safe:
                return  # stopped when its first event arrives, or when connect() returns
            took = self._call_lock.acquire(timeout=self.transport.stop_timeout_s)
            try:
                with registry():
                    go_stop(run.client)
            finally:
                if took:
                    self._call_lock.release()

    # --- events (on the Go thread: append and return) --------------------------------------

    def _handler(self, run: Run, kind: str) -> Callable[[Any, Any], None]:
        def on_event(_client, event) -> None:
            try:
                with self._lock:
                    run.delivering, pending = True, run.stop_pending
                    run.stop_pending = False
                run.settle()
                if kind == "Connected":
                    self.connected = run is self._run
                elif kind in ("Disconnected", "LoggedOut", "StreamReplaced", "TemporaryBan"):
                    self.connected = False
                    run.logged_out = run.logged_out or kind == "LoggedOut"
                elif kind == "PairStatus" and event.Status == _nz.npb.PairStatus.SUCCESS:
                    self.device_jid = _nz.npb.JID()
                    self.device_jid.CopyFrom(event.ID)
                try:
                    raw = event.SerializeToString()
                except Exception:  # a required field Go left out: keep the event anyway
                    raw = event.SerializePartialToString()
                self._deliver(kind, raw)
                if kind == "StreamReplaced":
                    self.stream_replaced = True
                    self.transport.watch(self, run, "stream_replaced")
                elif pending:
                    self.transport.watch(self, run, "stopped")  # the Stop a halt left pending
            except Exception:
                log.exception("[realtime] accountId=%s %s handler failed", self.account_id, kind)

        return on_event

    def _qr_handler(self, run: Run) -> Callable[[Any, bytes], None]:
        def on_qr(_client, code: bytes) -> None:
            try:
                with self._lock:
                    run.qr_phase = True
                    halted = run.halt_reason is not None
                run.settle()
                if halted:
                    return  # a halted client's QR loop goes on in Go; nobody can scan those codes
                text = code.decode("utf-8", "replace") if isinstance(code, bytes) else str(code)
                self._deliver("QR", _nz.npb.QR(Codes=[text]).SerializeToString())
            except Exception:
                log.exception("[realtime] accountId=%s QR handler failed", self.account_id)

        return on_qr

    def _deliver(self, kind: str, raw: bytes) -> None:
        try:
            self.sink(kind, raw)
        except Exception:
            self.dropped_events += 1
            log.error("[realtime] accountId=%s spool refused a %s event (%d bytes); whatsmeow has acknowledged "
                      "it, so it is lost", self.account_id, kind, len(raw), exc_info=True)

    # --- calls into Go -------------------------------------------------------------------------

    def _call(self, op: str, timeout_s: float, fn: Callable[[Any], Any]) -> Any:
        """`fn(client)` on a daemon thread (neonize calls have no timeout, and a stuck one
        must hold neither the caller nor the interpreter's exit), while the client is live."""
        run = self._run
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                with self._call_lock:
                    with self._lock:
                        live = (run is self._run and run.accepting and not run.ended
                                and (run.delivering or run.qr_phase))
                    if not live:
                        raise NotConnected(f"account {self.account_id} is not connected")
                    box["value"] = fn(run.client)
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name=f"neonize-{op}-{self.account_id}", daemon=True).start()
        if not done.wait(timeout_s):
            raise SessionError(f"{op}: no answer from WhatsApp within {timeout_s:.0f} s")
        if "error" in box:
            error = translate_error(op, box["error"])
            if error is box["error"]:
                raise error
            raise error from box["error"]
        return box.get("value")

    def send_text(self, to_jid: str, text: str, message_id: Optional[str] = None,
                  timeout_s: float = 30.0) -> SendResult:
        if message_id is not None:
            raise CapabilityAbsent("neonize 0.5.2 cannot send under a message id of the caller's choosing")
        to = parse_jid(to_jid)
        message = _nz.Message(conversation=text)  # a plain `conversation`, as the phone sends
        response = self._call("send", timeout_s, lambda client: client.send_message(to, message))
        return SendResult(message_id=response.ID, ts_ms=timestamp_ms(response.Timestamp))

    def mark_read(self, chat_jid: str, sender_jid: Optional[str], message_ids: list[str], ts_ms: int) -> None:
        if not message_ids:
            return
        chat = parse_jid(chat_jid)
        sender = parse_jid(sender_jid) if sender_jid else empty_jid()
        self._call("mark_read", 30.0, lambda client: client.mark_read(
            *message_ids, chat=chat, sender=sender, receipt=_nz.ReceiptType.READ, timestamp=ts_ms // 1000))

    def request_history(self, chat_jid: str, anchor: MessageRef, count: int,
                        direction: HistoryDirection = HistoryDirection.BEFORE) -> None:
        """BEFORE only: WhatsApp's HistorySyncOnDemandRequest has just an oldest-message
        anchor (oldestMsgID, oldestMsgTimestampMS, oldestMsgFromMe) and asks the phone
        for what precedes it; nothing asks for newer messages, so AFTER is CapabilityAbsent."""
        if HistoryDirection(direction) is not HistoryDirection.BEFORE:
            raise CapabilityAbsent("WhatsApp's on-demand history request only reads back from the oldest message")
        if history_api(self._run.client) is None:
            raise CapabilityAbsent("neonize 0.5.2 cannot send an on-demand history request")
        chat, npb = parse_jid(chat_jid), _nz.npb
        source = npb.MessageSource(Chat=chat, Sender=empty_jid(), IsFromMe=anchor.from_me,
                                   IsGroup=chat.Server == "g.us", SenderAlt=empty_jid(),
                                   RecipientAlt=empty_jid(), BroadcastListOwner=empty_jid())
        info = npb.MessageInfo(MessageSource=source, ID=anchor.id, ServerID=0, Type="", Pushname="",
                               Timestamp=anchor.ts_ms, Category="", Multicast=False, MediaType="", Edit="")
        self._call("history", 30.0, lambda client: history_api(client)(info, count))

    def pair_phone(self, phone: str) -> str:
        number = digits(phone)
        if not number:
            raise SessionError(f"pair_phone: not a phone number: {phone!r}")
        if self.connected:
            raise SessionError("pair_phone works only while pairing (the client shows QR codes)")
        run = self._run
        if run.thread is not None:
            run.settled.wait(self.transport.settle_wait_s)  # the first QR code: Go is ready to pair
        return self._call("pair_phone", 60.0, lambda client: client.PairPhone(
            number, True, client_name=_nz.ClientName.LINUX, client_type=_nz.ClientType.CHROME))

    def logout(self) -> None:
        run = self._run
        self._call("logout", 30.0, lambda client: client.logout())
        # whatsmeow deleted the device and disconnected, but emits no LoggedOut for a logout
        # it was asked for; the pipeline (and the simulator) expect one.
        if not run.logged_out:
            npb = _nz.npb
            self._deliver("LoggedOut", npb.LoggedOut(OnConnect=False, Reason=npb.LOGGED_OUT).SerializeToString())
        self.halt(run, "logged_out")  # nothing left to run
