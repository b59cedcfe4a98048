"""Go-side plumbing for the neonize transport (runtime/transport/neonize.py).

Everything here exists because of how neonize 0.5.2's Go library (goneonize) behaves;
each helper says which behaviour it answers. Read from goneonize's main.go at the
version shipped in the 0.5.2 wheel and checked against the library where possible.

- Its per-client maps (`clients`, `StopSignal`, `eventChannel`) are plain Go maps with
  no lock. They are written when a client registers (inside `Neonize()`, i.e. inside
  `NewClient.connect()`, after the session store is opened and before the websocket is
  dialled) and when it is stopped (`Stop()`), and read by every per-client call. Two
  writes at once kill the process ("fatal error: concurrent map writes"). `registry()`
  is one process-wide lock for the writes we can bracket: client construction, `Stop()`,
  and a `RegistrationWindow` around each client's registration.
- Calls on a client Go does not know (not registered yet, or stopped) answer "client is
  nil" for the calls used here (send, mark_read, PairPhone, logout: NotConnected), but
  others panic in Go and abort the process (`get_me()`, measured). The session only calls
  into a client Go has registered and not stopped.
- `GetAllDevices` (the only way to list the devices of a shared PostgreSQL store) opens a
  connection pool it never closes; so does every `connect()`. `list_device_jids` is
  therefore called once per session client, not polled.
- `connect()` (Go `Neonize()`) registers the client, dials (and, for a new device, shows
  QR codes until paired or out of codes), and only then enters its event loop, whose
  first act (`FetchMe`) reads `clients[id].Store` and waits for the device to have an ID.
  `Stop()` deletes `clients[id]`: a Stop before the event loop started makes that read a
  nil-pointer panic, which kills the process. The loop's first callback is the `me`
  Device (neonize stores it in `client.me`), so "me is set, or connect() returned" is
  when Stop is safe; before that a client can only be disconnected.
- For a device that never paired, the event loop waits forever for an ID once the QR
  codes run out, and nothing can interrupt it; neonize runs `connect()` on a non-daemon
  thread, which would keep the interpreter from exiting. `release_stuck_thread` takes
  such a thread off the interpreter's exit wait.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from wasync.runtime.transport.session import InvalidRecipient, NotConnected, RateLimited, SessionError

# --- the process-wide registry lock -------------------------------------------------

_GO_REGISTRY = threading.Lock()  # a Lock, not an RLock: a window may be closed from another thread


@contextmanager
def registry() -> Iterator[None]:
    """Hold while doing anything that writes goneonize's client maps."""
    with _GO_REGISTRY:
        yield


class RegistrationWindow:
    """Holds the registry lock while one client registers itself in Go.

    `enter()` runs on the session's connect thread just before `connect()`; `close()`
    runs on the first sign that Go has registered the client (its first event or QR
    code, both sent only afterwards), when `connect()` returns, or after `max_s`,
    whichever comes first, from whichever thread sees it. Closing is idempotent.
    """

    def __init__(self, max_s: float):
        self.max_s = max_s
        self._guard = threading.Lock()
        self._held = False
        self._timer: Optional[threading.Timer] = None

    def enter(self) -> None:
        _GO_REGISTRY.acquire()
        timer = threading.Timer(self.max_s, self.close)
        timer.daemon = True
        with self._guard:
            self._held, self._timer = True, timer
        timer.start()

    def close(self) -> None:
        with self._guard:
            if not self._held:
                return
            self._held, timer = False, self._timer
        if timer is not None:
            timer.cancel()
        _GO_REGISTRY.release()


class Run:
    """One neonize client and the life of its `connect()`; a restart makes a new one.
    Flags change under the session's lock."""

    def __init__(self):
        self.client: Any = None
        self.thread: Optional[threading.Thread] = None
        self.window: Optional[RegistrationWindow] = None
        self.settled = threading.Event()  # Go has the client (it called back), or connect() returned
        self.qr_phase = False  # goneonize is showing QR codes (before its event loop)
        self.delivering = False  # goneonize's event loop runs: Stop is safe from here on
        self.accepting = False  # calls into Go allowed
        self.ended = False  # connect() returned
        self.halt_reason: Optional[str] = None
        self.disconnected = False
        self.stop_pending = False  # halted, Go's Stop waits until it is safe
        self.logged_out = False  # a LoggedOut event went to the sink

    def settle(self) -> None:
        self.settled.set()
        if self.window is not None:
            self.window.close()


def go_stop(client) -> None:
    """neonize's `stop()` (Go `Stop`: disconnect, forget the client, end `connect()`),
    through the client's GC finalizer when it is still armed: calling it runs the same
    Stop once and disarms it, so garbage collection never stops a client later, outside
    the registry lock. Idempotent on the Go side; call with `registry()` held."""
    finalizer = getattr(client, "_stop_finalizer", None)
    if finalizer is not None and finalizer.alive:
        finalizer()
    else:
        client.stop()


# --- threads neonize leaves behind ---------------------------------------------------


def release_stuck_thread(name: str) -> int:
    """Let the interpreter exit although neonize's non-daemon worker `name` is stuck in
    Go for good. CPython 3.11 (this project's only version) waits at exit for the
    tstate locks in `threading._shutdown_locks`; dropping the thread's lock from there and
    marking it daemon makes it behave as a daemon thread. Returns how many were released."""
    locks = getattr(threading, "_shutdown_locks", None)
    locks_lock = getattr(threading, "_shutdown_locks_lock", None)
    released = 0
    for thread in threading.enumerate():
        if thread.name != name or thread.daemon or thread is threading.current_thread():
            continue
        tstate_lock = getattr(thread, "_tstate_lock", None)
        if locks is None or locks_lock is None or tstate_lock is None:
            continue
        with locks_lock:
            locks.discard(tstate_lock)
        thread._daemonic = True
        released += 1
    return released


# --- JIDs ------------------------------------------------------------------------------

# Servers whatsmeow knows (types/jid.go); anything else is refused before it reaches Go.
KNOWN_SERVERS = frozenset({
    "s.whatsapp.net", "g.us", "lid", "broadcast", "newsletter", "c.us", "msgr", "interop",
    "hosted", "hosted.lid", "bot",
})
_JID = re.compile(r"^(?P<user>[^@:.]+)(?:\.(?P<agent>\d+))?(?::(?P<device>\d+))?@(?P<server>[a-z.]+)$")


def parse_jid(value: Optional[str]):
    """A neonize JID protobuf (every proto2 field set) from "user[.agent][:device]@server".
    Raises InvalidRecipient for anything whatsmeow would not accept."""
    from neonize.proto import Neonize_pb2 as npb

    match = _JID.match((value or "").strip())
    if match is None or match["server"] not in KNOWN_SERVERS:
        raise InvalidRecipient(f"not a WhatsApp JID: {value!r}")
    return npb.JID(User=match["user"], RawAgent=int(match["agent"] or 0), Device=int(match["device"] or 0),
                   Integrator=0, Server=match["server"], IsEmpty=False)


def empty_jid():
    from neonize.proto import Neonize_pb2 as npb

    return npb.JID(User="", RawAgent=0, Device=0, Integrator=0, Server="", IsEmpty=True)


def jid_text(jid) -> str:
    """whatsmeow's JID.String() for a neonize JID protobuf."""
    if jid.IsEmpty or not jid.User:
        return jid.Server
    agent = f".{jid.RawAgent}" if jid.RawAgent else ""
    device = f":{jid.Device}" if jid.Device or jid.RawAgent else ""
    return f"{jid.User}{agent}{device}@{jid.Server}"


def digits(phone: Optional[str]) -> str:
    return re.sub(r"\D", "", phone or "")


def safe_file_stem(account_id: str) -> str:
    """The account id when it is a plain file name, else a readable, collision-free one:
    the session store is opened as an SQLite URI, where `?`, `#` and `%` mean something."""
    if re.fullmatch(r"[A-Za-z0-9._-]+", account_id) and account_id not in (".", ".."):
        return account_id
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", account_id).strip("._") or "account"
    return f"{readable}-{hashlib.sha256(account_id.encode()).hexdigest()[:10]}"


# --- the shared PostgreSQL store --------------------------------------------------------


def with_connect_timeout(dsn: str, seconds: int = 10) -> str:
    """The DSN with lib/pq's `connect_timeout` unless it has one: without it a host that
    drops packets hangs a store open (and `connect()` with it) forever."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "connect_timeout" for key, _ in query):
        return dsn
    return urlunsplit(parts._replace(query=urlencode(query + [("connect_timeout", str(seconds))])))


def list_device_jids(dsn: str) -> list[str]:
    """The device JIDs ("phone:device@s.whatsapp.net") stored under `dsn`; creates the
    whatsmeow tables if they are missing. Parsed here rather than with neonize's
    `get_all_devices_from_db`, which breaks on push names containing commas."""
    from neonize._binder import func_callback_bytes2, gocode
    from neonize.utils import log_whatsmeow

    log_cb = func_callback_bytes2(log_whatsmeow)  # kept referenced for the whole call
    raw = gocode.GetAllDevices(dsn.encode(), log_cb)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    if text.startswith("error: "):
        raise SessionError(f"session store: {text[len('error: '):]}")
    return [row.split(",", 1)[0] for row in text.split("|\x01|") if row.strip()]


# --- errors and units ------------------------------------------------------------------

_NOT_CONNECTED = ("not connected", "not logged in", "client is nil", "doesn't contain a device jid", "client not found",
                  "disconnected before", "websocket disconnected")
_RATE_LIMITED = re.compile(r"rate-?overlimit|rate limit|too many requests|\b429\b", re.IGNORECASE)
_BAD_RECIPIENT = ("unknown server", "recipient must be", "invalid jid", "broadcast lists is not",
                  "not on whatsapp", "no devices found")


def translate_error(op: str, exc: BaseException) -> SessionError:
    """A neonize/whatsmeow failure as the port's typed error (decided from its text:
    neonize turns every Go error into one exception class per call)."""
    if isinstance(exc, SessionError):
        return exc
    text = str(exc)
    lowered = text.lower()
    message = f"{op}: {text or type(exc).__name__}"
    if _RATE_LIMITED.search(text):
        return RateLimited(message)
    if any(marker in lowered for marker in _BAD_RECIPIENT):
        return InvalidRecipient(message)
    if any(marker in lowered for marker in _NOT_CONNECTED):
        return NotConnected(message)
    return SessionError(message)


def timestamp_ms(value: int, *, now_ms: Optional[int] = None) -> int:
    """A send response's timestamp in milliseconds. goneonize versions have encoded
    whatsmeow's time.Time as Unix seconds and as nanoseconds; the magnitude says which.
    Go's zero time (no server timestamp) becomes now."""
    value = int(value)
    if value <= 0:
        return now_ms if now_ms is not None else int(time.time() * 1000)
    if value < 10**11:  # seconds (until the year 5138)
        return value * 1000
    if value < 10**14:  # milliseconds
        return value
    if value < 10**17:  # microseconds
        return value // 1000
    return value // 1_000_000  # nanoseconds


# --- what the client asks for, and what it can do ---------------------------------------


def device_props(sync_full_history: bool, days: int = 3650, size_mb: int = 102400):
    """DeviceProps for pairing. Full history: requireFullSync with a HistorySyncConfig of
    `days` (fullSyncDaysLimit) and `size_mb` (fullSyncSizeMbLimit; storageQuotaMb stays
    100 GB), whatsmeow's documented knobs: the phone decides what it sends. Plus the
    DESKTOP platform, which WhatsApp is reported to honour for full syncs."""
    from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

    props = DeviceProps(os="wasync", requireFullSync=sync_full_history)
    if sync_full_history:
        props.platformType = DeviceProps.DESKTOP
        props.historySyncConfig.CopyFrom(DeviceProps.HistorySyncConfig(
            fullSyncDaysLimit=days, fullSyncSizeMbLimit=size_mb, storageQuotaMb=102400))
    else:
        props.platformType = DeviceProps.SAFARI  # neonize's own default
    return props


def history_api(client):
    """How this neonize can send an on-demand history request, or None (0.5.2: it cannot:
    the request must go to our own phone as a peer message, which its send API cannot
    mark). Used if a later neonize has `request_history_sync(info, count)` or
    `send_peer_message(message)` (whatsmeow's names); never faked."""
    request = getattr(client, "request_history_sync", None)
    if callable(request):
        return request
    send_peer = getattr(client, "send_peer_message", None)
    if callable(send_peer):
        from neonize.builder import build_history_sync_request

        return lambda info, count: send_peer(build_history_sync_request(info, count))
    return None
