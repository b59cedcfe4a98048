"""`wasync sim`: the simulated WhatsApp service over HTTP (docs/simulator.md).

One aiohttp application: client sessions on a websocket at wire.SESSION_PATH (the
protocol is wire.py's) and the control API under /sim/. This module only moves frames
and runs timers; what the service does is engine.py, timeline.py and state.py.

- Every socket has a frame queue and one writer task, so the synchronous simulation
  can send from anywhere (a timer, another socket's hello, an HTTP call) in order.
- A socket the service closes gets its `closing` frame; if it has events to acknowledge
  it gets up to CLOSE_GRACE_S (real seconds) to do so (or to close its side), then it
  is closed.
- The timers run from one `loop.call_later` handle re-armed for the earliest timer: no
  task per timer, nothing to cancel but that handle on shutdown.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import secrets
import signal
import sys
from collections import deque
from typing import Optional

from aiohttp import WSMsgType, web

from wasync.runtime.sim import timeline, wire
from wasync.runtime.sim.clock import Clock, SimTime, SystemClock, Timers
from wasync.runtime.sim.engine import Simulation
from wasync.runtime.sim.world import World, WorldError, load_world

log = logging.getLogger("wasync.sim")

CLOSE_GRACE_S = 1.0
CLOSE_TIMEOUT_S = 2.0  # for the client's answer to our websocket close
HEARTBEAT_S = 30.0  # real seconds: a client that stops answering pings (SIGSTOP, lost network) is dropped
MAX_FRAME_BYTES = 1 << 20
SIM_KEY = web.AppKey("sim", Simulation)  # the app's simulation, for tools that look inside


class _Socket:
    """The service's side of one websocket (engine's Link): queued frames, one writer."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self._frames: deque[str] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._linger = False
        self._settled = asyncio.Event()  # the client acked everything, or is gone
        self.writer: Optional[asyncio.Task] = None

    def send(self, text: str) -> None:
        if not self._closing:
            self._frames.append(text)
            self._wake.set()

    def close(self, reason: Optional[str], retry_after_s: Optional[float], linger: bool = False) -> None:
        if self._closing:
            return
        if reason is not None:
            self._frames.append(wire.encode({"op": "closing", "reason": reason, "retry_after_s": retry_after_s}))
        self._closing, self._linger = True, linger
        self._wake.set()

    def settle(self) -> None:
        self._settled.set()

    async def write_loop(self) -> None:
        try:
            while True:
                while self._frames:
                    await self.ws.send_str(self._frames.popleft())
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
            if self._linger:  # acks of what it spooled may still be on their way
                try:
                    await asyncio.wait_for(self._settled.wait(), CLOSE_GRACE_S)
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-write
            log.debug("[sim] write failed: %s", exc)
        finally:
            self._closing = True  # nothing more to queue for a socket nobody writes to
            self._frames.clear()
            try:
                await self.ws.close()
            except (ConnectionError, RuntimeError) as exc:
                log.debug("[sim] close failed: %s", exc)


class _TimerDriver:
    """Runs the simulation's timers on the event loop."""

    def __init__(self, timers: Timers):
        self.timers = timers
        self._handle: Optional[asyncio.TimerHandle] = None
        self._running = False
        self._stopped = False

    def start(self) -> None:
        self.timers.on_earlier = self.arm
        self.arm()

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
        self.timers.clear()

    def arm(self) -> None:
        if self._running or self._stopped:
            return  # `_fire` re-arms when the due timers have run
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        due = self.timers.next_due()
        if due is not None:
            delay = max(0.0, self.timers.time.real(due - self.timers.time.now()))
            self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._running = True
        try:
            self.timers.run_due()
        finally:
            self._running = False
        self.arm()


class _Service:
    def __init__(self, sim: Simulation, driver: _TimerDriver):
        self.sim, self.driver = sim, driver
        self.sockets: set[_Socket] = set()

    async def on_startup(self, app: web.Application) -> None:
        self.sim.time.restart()  # the timeline starts now
        timeline.schedule(self.sim, self.sim.world.timeline)
        self.driver.start()

    async def on_shutdown(self, app: web.Application) -> None:
        self.driver.stop()
        for sock in list(self.sockets):
            sock.close("shutdown", None)
        writers = [s.writer for s in self.sockets if s.writer is not None]
        if writers:
            _, stuck = await asyncio.wait(writers, timeout=CLOSE_GRACE_S + 1.0)
            for writer in stuck:  # a client that stopped reading: don't wait on its buffer
                writer.cancel()

    async def session(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=HEARTBEAT_S, timeout=CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        sock = _Socket(ws)
        conn = self.sim.open(sock)
        sock.writer = asyncio.create_task(sock.write_loop())
        self.sockets.add(sock)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.sim.receive(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.sim.reject(conn, "frames are JSON text, not binary")
        finally:
            sock.settle()
            self.sim.closed(conn)
            sock.close(None, None)
            await asyncio.shield(sock.writer)
            self.sockets.discard(sock)
        return ws

    # --- control API

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def world(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.world_json(request.query.get("account")))

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.stats_json())

    async def scan(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        code = body.get("qr", body.get("code")) if isinstance(body, dict) else None
        if not isinstance(code, str):
            return web.json_response({"error": 'expected {"qr": "<a code the client shows>"}'}, status=400)
        status, answer = self.sim.scan(request.match_info["phone"], code)
        return web.json_response(answer, status=status)

    async def events(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body is _NOT_JSON:
            return web.json_response({"errors": ["(body): not JSON"]}, status=400)
        try:
            count = timeline.inject(self.sim, body)
        except WorldError as exc:
            return web.json_response({"errors": list(exc.errors)}, status=400)
        return web.json_response({"ok": True, "applied": count})


_NOT_JSON = object()


async def _json_body(request: web.Request):
    try:
        return await request.json()
    except ValueError:
        return _NOT_JSON


def create_app(world: World, *, speed: float = 1.0, clock: Optional[Clock] = None,
               id_salt: Optional[int] = None) -> web.Application:
    """The service for `world`. `speed` scales the timeline; `clock` (monotonic + Unix
    time) defaults to the system's; `id_salt` varies the ids the service makes up
    (sends, traffic) between runs of one world — random unless given."""
    time = SimTime(clock or SystemClock(), speed)
    timers = Timers(time)
    salt = id_salt if id_salt is not None else secrets.randbits(64)
    sim = Simulation(world, time, timers, id_salt=salt)
    service = _Service(sim, _TimerDriver(timers))
    app = web.Application()
    app[SIM_KEY] = sim
    app.on_startup.append(service.on_startup)
    app.on_shutdown.append(service.on_shutdown)
    app.router.add_get(wire.SESSION_PATH, service.session)
    app.router.add_get("/sim/health", service.health)
    app.router.add_get("/sim/world", service.world)
    app.router.add_get("/sim/stats", service.stats)
    app.router.add_post("/sim/accounts/{phone}/scan", service.scan)
    app.router.add_post("/sim/events", service.events)
    return app


# --- `wasync sim` ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wasync sim", description="Run the simulated WhatsApp service.")
    parser.add_argument("--world", required=True, help="world file (JSON, see docs/simulator.md)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (logged at start)")
    parser.add_argument("--speed", type=_speed, default=1.0, help="timeline speed factor (10 = ten times faster)")
    return parser


def _speed(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def main(argv: Optional[list[str]] = None) -> int:
    """`wasync sim --world FILE --host H --port P [--speed X]`; runs until SIGINT/SIGTERM."""
    args = _parser().parse_args(argv)
    try:
        world = load_world(args.world)
    except WorldError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wasync sim: cannot read {args.world}: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(_serve(world, args.host, args.port, args.speed))


async def _serve(world: World, host: str, port: int, speed: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(world, speed=speed), handle_signals=False, shutdown_timeout=5.0)
    # The world and its index live as long as the process (millions of objects in a big
    # generated world): keep the cyclic collector from walking them again and again.
    gc.freeze()
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            print(f"wasync sim: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        bound = runner.addresses[0][1] if runner.addresses else port
        chats = sum(len(a.chats) for a in world.accounts)
        messages = sum(len(c.messages) for a in world.accounts for c in a.chats)
        log.info("[sim] listening on http://%s:%s accounts=%d chats=%d messages=%d timeline=%d speed=%g",
                 host, bound, len(world.accounts), chats, messages, len(world.timeline), speed)
        await stop.wait()
        log.info("[sim] stopping")
    finally:
        await runner.cleanup()
    return 0
