"""The Session port over the simulator (`WASYNC_TRANSPORT=sim://host:port`).

All sessions of one `SimulatedTransport` share one asyncio loop on one daemon thread:
500 accounts cost 500 websockets, not 500 threads. The protocol is runtime/sim/wire.py.

Like whatsmeow, a session reconnects by itself after a dropped socket (backoff with
jitter) and after a `disconnect` closing once its retry time has passed, but never after
`stream_replaced` or `logged_out` (another client owns the session, or it is gone) nor
after `banned`: the supervisor waits out a temporary ban and starts a new session, so
the rule is the same whatever the transport. Reconnects take a slot from the shared
start gate (storm control) when one is given. Each event goes to the sink (the spool
append) and only then is acknowledged; if the sink raises, the event is not acknowledged
and the socket is dropped, so the service sends it again.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
from pathlib import Path
from typing import Any, Optional

import aiohttp
from neonize.proto import Neonize_pb2

from wasync.runtime.backoff import Backoff
from wasync.runtime.sim import wire
from wasync.runtime.transport.session import (
    Capabilities, EventSink, HistoryDirection, InvalidRecipient, MessageRef, NotConnected, NotOnWhatsApp, RateLimited,
    Refused, SendResult, SessionError,
)

log = logging.getLogger("wasync.transport.sim")

_ERRORS = {wire.NOT_CONNECTED: NotConnected, wire.INVALID_RECIPIENT: InvalidRecipient,
           wire.RATE_LIMITED: RateLimited, wire.NOT_ON_WHATSAPP: NotOnWhatsApp, wire.BAD_REQUEST: Refused}
_NO_RECONNECT = ("stream_replaced", "logged_out", "banned")


class SimulatedTransport:
    """SessionFactory for the simulator at (host, port); owns the shared loop thread."""

    def __init__(self, host: str, port: int, sessions_path: str | Path, *,
                 backoff: Backoff = Backoff(initial_ms=200, max_ms=10_000), gate=None, registration_s: float = 0.0):
        self.url = f"http://{host}:{port}{wire.SESSION_PATH}"
        self.gate = gate  # actors/startgate.StartGate (wired by the daemon), or None: reconnect without pacing
        self.sessions_path = Path(sessions_path)
        self.backoff = backoff  # between reconnects after a dropped socket
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._http: Optional[aiohttp.ClientSession] = None
        self._start_error: Optional[BaseException] = None
        self._lock = threading.Lock()
        # neonize registers one client at a time per process (~1 s each against WhatsApp):
        # with registration_s > 0 connects take turns like that, so that a benchmark of
        # cold starts and of several instances per host meets the same limit.
        self.registration_s = registration_s
        self._registering: Optional[asyncio.Lock] = None  # made on the loop thread

    @classmethod
    def from_settings(cls, settings, gate=None) -> "SimulatedTransport":
        host, port = settings.sim_address
        return cls(host, port, settings.sessions_path, gate=gate, registration_s=settings.sim_registration_ms / 1000)

    def open(self, account_id: str, phone: Optional[str], sink: EventSink) -> "SimulatedSession":
        return SimulatedSession(self, account_id, phone, sink)

    def forget(self, account_id: str) -> None:
        """Drop the account's stored session so the next one pairs afresh (re-pair)."""
        try:
            (self.sessions_path / f"{account_id}.sim.json").unlink()
        except FileNotFoundError:
            pass

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                ready = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(ready,), name="sim-transport", daemon=True)
                self._thread.start()
                ready.wait()
                if self._start_error is not None:
                    error, self._loop, self._start_error = self._start_error, None, None
                    raise RuntimeError(f"the simulator transport could not start: {error}") from error
            return self._loop

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._http = self._loop.run_until_complete(self._open_http())
        except BaseException as exc:
            self._start_error = exc
            ready.set()
            return
        ready.set()
        self._loop.run_forever()

    @staticmethod
    async def _open_http() -> aiohttp.ClientSession:
        # Each session's websocket holds a connection for its whole life: aiohttp's default
        # pool of 100 would leave account 101 onward waiting in ws_connect forever.
        # `connect` bounds the handshake, waiting for a connection included: a connect
        # that cannot finish fails (and is retried with backoff) instead of hanging.
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=None, connect=15))

    def http(self) -> aiohttp.ClientSession:
        return self._http

    async def register_turn(self) -> None:
        """Wait for this process's registration turn and take it (on the loop thread)."""
        if self.registration_s <= 0:
            return
        if self._registering is None:
            self._registering = asyncio.Lock()
        async with self._registering:
            await asyncio.sleep(self.registration_s)

    async def _shutdown(self) -> None:
        """Sessions nobody stopped are cancelled, so nothing is left pending."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.close()

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        loop.close()


class SimulatedSession:
    capabilities = Capabilities(on_demand_history=True, pair_phone=True, history_after=True, chosen_message_ids=True)

    def __init__(self, transport: SimulatedTransport, account_id: str, phone: Optional[str], sink: EventSink):
        self.transport = transport
        self.account_id = account_id
        self.phone = phone
        self.sink = sink
        self._keys = transport.sessions_path / f"{account_id}.sim.json"  # see SimulatedTransport.forget
        self._task: Optional[asyncio.Future] = None
        self._ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self._replies: dict[int, asyncio.Future] = {}
        self._next_req = 0
        self._stopping = False
        self._loop_task: Optional[asyncio.Task] = None
        self.connected = False
        self.failure: Optional[BaseException] = None  # why the connection loop died, if it did

    # --- the port ----------------------------------------------------------------

    def start(self) -> None:
        loop = self.transport.loop()
        self._stopping = False
        self._task = asyncio.run_coroutine_threadsafe(self._run(), loop)

    def stop(self) -> None:
        """Idempotent; a second, concurrent stop (a supervisor killing a hung actor's session)
        waits for the same end."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        loop = self.transport.loop()
        loop.call_soon_threadsafe(self._task_cancel)
        try:
            task.result(timeout=10)
        except BaseException:  # cancelled, or it had already failed: either way it is over
            pass
        self._task = None

    def send_text(self, to_jid: str, text: str, message_id: Optional[str] = None,
                  timeout_s: float = 30.0) -> SendResult:
        frame = {"op": "send", "to": to_jid, "text": text}
        if message_id is not None:
            frame["id"] = message_id
        result = self._call(frame, timeout_s)
        return SendResult(message_id=result["id"], ts_ms=int(result["ts"]) * 1000)

    def mark_read(self, chat_jid: str, sender_jid: Optional[str], message_ids: list[str], ts_ms: int) -> None:
        self._call({"op": "mark_read", "chat": chat_jid, "ids": list(message_ids)}, 10.0)

    def request_history(self, chat_jid: str, anchor: MessageRef, count: int,
                        direction: HistoryDirection = HistoryDirection.BEFORE) -> None:
        self._call({"op": "history", "chat": chat_jid, "anchor": anchor.id, "count": count,
                    "direction": HistoryDirection(direction).value}, 30.0)

    def pair_phone(self, phone: str) -> str:
        # Asked while pairing: the socket is open but the session is not "connected" yet.
        return self._call({"op": "pair_phone", "phone": phone}, 30.0, need_connected=False)["code"]

    def logout(self) -> None:
        self._call({"op": "logout"}, 10.0)
        self._forget_keys()

    # --- requests from actor threads ---------------------------------------------

    def _call(self, frame: dict[str, Any], timeout_s: float, need_connected: bool = True) -> dict:
        future = asyncio.run_coroutine_threadsafe(self._request(frame, need_connected), self.transport.loop())
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise SessionError(f"{frame['op']}: no answer from the simulator within {timeout_s:.0f} s") from None

    async def _request(self, frame: dict[str, Any], need_connected: bool) -> dict:
        if self._ws is None or self._ws.closed or (need_connected and not self.connected):
            raise NotConnected(f"account {self.account_id} is not connected")
        self._next_req += 1
        req = self._next_req
        reply = asyncio.get_running_loop().create_future()
        self._replies[req] = reply
        try:
            await self._ws.send_str(wire.encode({**frame, "req": req}))
            answer = await reply
        finally:
            self._replies.pop(req, None)
        if answer.get("ok"):
            return answer.get("result") or {}
        error = answer.get("error") or {}
        raise _ERRORS.get(error.get("reason"), SessionError)(error.get("message") or "simulator refused")

    # --- the connection loop (on the transport's thread) -----------------------------

    def _task_cancel(self) -> None:
        # Closing the socket wakes the reader; the loop then sees _stopping and ends. Without
        # an open socket (still connecting, or waiting to reconnect) the loop is cancelled:
        # a connect that finished after stop() would leave a socket nobody reads, which
        # kicks the account's next owner (StreamReplaced).
        if self._ws is not None and not self._ws.closed:
            asyncio.ensure_future(self._ws.close())
        elif self._loop_task is not None:
            self._loop_task.cancel()

    async def _run(self) -> None:
        self._loop_task = asyncio.current_task()
        try:
            await self._connection_loop()
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            # Never a silently deaf session: say so, and keep the reason for whoever watches.
            self.failure = exc
            log.exception("[realtime] accountId=%s session loop crashed", self.account_id)
            raise

    async def _connection_loop(self) -> None:
        attempt = 0
        while not self._stopping:
            closing = None
            try:
                closing = await self._connect_once()
                attempt = 0
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                log.info("[realtime] accountId=%s simulator unreachable: %s", self.account_id, exc)
            except _SinkFailed as exc:
                log.warning("[realtime] accountId=%s spool refused an event, reconnecting: %s",
                            self.account_id, exc.__cause__)
            finally:
                await self._lost_connection()
            if self._stopping:
                break
            reason = (closing or {}).get("reason")
            if reason in _NO_RECONNECT:
                log.info("[realtime] accountId=%s session closed (%s): not reconnecting", self.account_id, reason)
                if reason == "logged_out":
                    self._forget_keys()
                return
            wait = (closing or {}).get("retry_after_s")
            if wait is None:
                wait, attempt = self.transport.backoff.delay_s(attempt, random.random()), attempt + 1
            await asyncio.sleep(wait)
            if self.transport.gate is not None and not self._stopping:
                await asyncio.sleep(self.transport.gate.reserve_delay_s())

    async def _connect_once(self) -> Optional[dict]:
        """One websocket's life; returns the service's `closing` frame, if it sent one."""
        keys = self._load_keys()
        await self.transport.register_turn()
        async with self.transport.http().ws_connect(self.transport.url, heartbeat=15) as ws:
            self._ws = ws
            if self._stopping:
                return None  # stopped while connecting: leave at once
            await ws.send_str(wire.encode({"op": "hello", "phone": keys.get("phone") or self.phone,
                                           "token": keys.get("token")}))
            closing = None
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = wire.decode(msg.data)
                op = frame["op"]
                if op == "event":
                    await self._deliver(ws, frame)
                elif op == "reply":
                    future = self._replies.get(frame.get("req"))
                    if future is not None and not future.done():
                        future.set_result(frame)
                elif op == "paired":
                    self.phone = frame["phone"]
                    self._save_keys({"phone": frame["phone"], "token": frame["token"]})
                elif op == "closing":
                    closing = frame
                    break  # every event before it is acknowledged already: close our side now
            return closing

    async def _deliver(self, ws, frame: dict) -> None:
        kind, raw = frame["kind"], wire.event_bytes(frame)
        try:
            self.sink(kind, raw)
        except Exception as exc:
            raise _SinkFailed() from exc
        if kind == "Connected":
            self.connected = True
        if frame["seq"] != wire.TRANSIENT_SEQ:
            await ws.send_str(wire.encode({"op": "ack", "seq": frame["seq"]}))

    async def _lost_connection(self) -> None:
        was_connected, self.connected, self._ws = self.connected, False, None
        for future in self._replies.values():
            if not future.done():
                future.set_exception(NotConnected(f"account {self.account_id}: connection lost"))
        if was_connected:
            # The service cannot announce a dropped socket; the client reports it, as whatsmeow does.
            try:
                self.sink("Disconnected", Neonize_pb2.Disconnected(status=True).SerializeToString())
            except Exception:
                log.exception("[realtime] accountId=%s could not spool Disconnected", self.account_id)

    # --- session keys under SESSIONS_PATH ---------------------------------------------

    def _load_keys(self) -> dict:
        try:
            return json.loads(self._keys.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("[realtime] accountId=%s unreadable session file %s: %s", self.account_id, self._keys, exc)
            return {}

    def _save_keys(self, keys: dict) -> None:
        self._keys.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._keys.with_suffix(".tmp")
        tmp.write_text(json.dumps(keys))
        os.replace(tmp, self._keys)

    def _forget_keys(self) -> None:
        try:
            self._keys.unlink()
        except FileNotFoundError:
            pass


class _SinkFailed(Exception):
    pass

