"""The simulated WhatsApp service (runtime/sim/service.py, engine.py, timeline.py,
state.py) over real HTTP and websockets on loopback, with aiohttp's client: no mocks.

Every event a test client receives is decoded with the daemon's own normalizer, so the
assertions are on the domain values the mirror would store. Worlds are small and the
timeline runs fast (`speed` 50 unless a test measures time), so each test takes well
under a few seconds.
"""
from __future__ import annotations

import asyncio
import functools
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import aiohttp
import pytest
from aiohttp import web
from neonize.proto import Neonize_pb2 as npb
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs

from wasync.runtime import model as m
from wasync.runtime.sim import historysync, wire
from wasync.runtime.sim.clock import SimTime, Timers
from wasync.runtime.sim.service import create_app
from wasync.runtime.sim.world import Chat, WorldMessage, parse_world
from wasync.runtime.transport.normalize import normalize

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.json"
PHONE, NEW = "15550001111", "15550002222"  # paired in the world / to be paired
ALICE, BOB, CAROL = "15552223333@s.whatsapp.net", "15554445555@s.whatsapp.net", "15556667777@s.whatsapp.net"
DAVE = "15558889999@s.whatsapp.net"
GROUP = "120363000000000001@g.us"
TS = 1_763_900_000
ID_RE = re.compile(r"3EB0[0-9A-F]{16}")
SPEED = 50.0


def world(timeline: tuple = (), *, per_chat: int = 50, generate: Optional[dict] = None) -> dict:
    shop = {"phone": PHONE, "pushName": "Shop A", "initialSyncPerChat": per_chat, "chats": [
        {"jid": ALICE, "name": "Alice", "messages": [
            {"id": "A1", "ts": TS, "text": "hi"},
            {"id": "A2", "fromMe": True, "ts": TS + 60, "text": "hello", "status": "delivered"},
            {"id": "A3", "ts": TS + 120, "text": "menu?"}]},
        {"jid": GROUP, "name": "Team", "messages": [{"id": "G1", "sender": BOB, "ts": TS + 100, "text": "at 8"}]},
        {"jid": CAROL, "name": "Carol", "autoReceipts": False},
    ]}
    if generate:
        shop["generate"] = generate
    return {"seed": 7, "accounts": [shop, {"phone": NEW, "pushName": "Shop B", "paired": False}],
            "timeline": list(timeline)}


def run_async(fn: Callable) -> Callable:
    """Run an async test on its own event loop, bounded in time."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))
    return wrapper


# --- a test client: one websocket session, every frame decoded ------------------------------


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, auto_ack: bool, close_on_closing: bool = True):
        self.ws, self.auto_ack, self.close_on_closing = ws, auto_ack, close_on_closing
        self.frames: asyncio.Queue[dict] = asyncio.Queue()
        self._req = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            frame = wire.decode(msg.data)
            if frame["op"] == "event":
                frame["value"] = normalize("acct", frame["kind"], wire.event_bytes(frame))[0]
                if self.auto_ack and frame["seq"]:
                    await self.ws.send_str(wire.encode({"op": "ack", "seq": frame["seq"]}))
            self.frames.put_nowait(frame)
            if frame["op"] == "closing" and self.close_on_closing:  # acks are out: close our side
                await self.ws.close()
        self.frames.put_nowait({"op": "_closed"})

    async def next(self, timeout: float = 3.0) -> dict:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def until(self, done: Callable[[dict], bool], timeout: float = 3.0) -> list[dict]:
        """Frames up to and including the first one `done` accepts."""
        frames: list[dict] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while not frames or not done(frames[-1]):
            frames.append(await asyncio.wait_for(self.frames.get(), deadline - asyncio.get_running_loop().time()))
            assert frames[-1]["op"] != "_closed" or done(frames[-1]), f"socket closed after {summary(frames)}"
        return frames

    async def until_value(self, cls: type, timeout: float = 3.0) -> list[dict]:
        return await self.until(lambda f: isinstance(f.get("value"), cls), timeout)

    async def quiet(self, seconds: float) -> list[dict]:
        """Whatever arrives within `seconds`."""
        await asyncio.sleep(seconds)
        return self.drain()

    def drain(self) -> list[dict]:
        frames = []
        while not self.frames.empty():
            frames.append(self.frames.get_nowait())
        return frames

    async def send(self, frame: dict) -> None:
        await self.ws.send_str(wire.encode(frame))

    async def request(self, op: str, **fields: Any) -> tuple[dict, list[dict]]:
        """(the reply, frames that came before it)."""
        self._req += 1
        req = self._req
        await self.send({"op": op, "req": req, **fields})
        frames = await self.until(lambda f: f["op"] == "reply" and f["req"] == req)
        return frames[-1], frames[:-1]

    async def close(self) -> None:
        await self.ws.close()
        await self.task


def values(frames: list[dict], cls: Optional[type] = None) -> list:
    out = [f["value"] for f in frames if "value" in f]
    return [v for v in out if isinstance(v, cls)] if cls else out


def summary(frames: list[dict]) -> list[str]:
    return [type(f["value"]).__name__ if "value" in f else f["op"] for f in frames]


def is_closing(reason: str) -> Callable[[dict], bool]:
    return lambda f: f["op"] == "closing" and f["reason"] == reason


def user_messages(frames: list[dict]) -> list[m.Message]:
    return values(frames, m.Message)


# --- the service on a free port ------------------------------------------------------------


class Service:
    def __init__(self, data: dict, *, speed: float = SPEED):
        self.world, self.speed = parse_world(data), speed
        self.clients: list[Client] = []

    async def __aenter__(self) -> "Service":
        self.runner = web.AppRunner(create_app(self.world, speed=self.speed, id_salt=1))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.started = asyncio.get_running_loop().time()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.http = aiohttp.ClientSession(self.base, connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc) -> None:
        for client in self.clients:
            if not client.ws.closed:
                await client.ws.close()
        await self.http.close()
        await self.runner.cleanup()

    async def connect(self, phone: Optional[str] = None, token: Optional[str] = None, *,
                      auto_ack: bool = True, close_on_closing: bool = True) -> Client:
        client = Client(await self.http.ws_connect(wire.SESSION_PATH), auto_ack=auto_ack,
                        close_on_closing=close_on_closing)
        self.clients.append(client)
        await client.send({"op": "hello", "phone": phone, "token": token})
        return client

    async def online(self, phone: str = PHONE, **kwargs) -> tuple[Client, list[dict]]:
        """A connected session, past its first OfflineSyncCompleted."""
        client = await self.connect(phone, **kwargs)
        return client, await client.until_value(m.OfflineSyncCompleted)

    async def get(self, path: str) -> Any:
        async with self.http.get(path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(path, data=body if isinstance(body, str) else json.dumps(body)) as resp:
            return resp.status, await resp.json()

    async def inject(self, *events: dict) -> None:
        status, body = await self.post("/sim/events", list(events))
        assert status == 200, body

    async def scan(self, phone: str, code: str) -> int:
        return (await self.post(f"/sim/accounts/{phone}/scan", {"qr": code}))[0]

    async def stats(self, phone: str = PHONE) -> dict:
        return (await self.get("/sim/stats"))["accounts"][phone]

    async def messages(self, phone: str = PHONE) -> dict[str, dict]:
        account = (await self.get(f"/sim/world?account={phone}"))["accounts"][0]
        return {msg["id"]: {**msg, "chat": c["jid"]} for c in account["chats"] for msg in c["messages"]}

    async def wait_stats(self, check: Callable[[dict], bool], phone: str = PHONE, timeout: float = 3.0) -> dict:
        deadline = time.monotonic() + timeout
        while not check(stats := await self.stats(phone)):
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.02)
        return stats


def message_event(chat: str = ALICE, **fields: Any) -> dict:
    return {"account": PHONE, "event": "message", "chat": chat, **fields}


# --- the pure parts: timers and history chunking ------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.t = 100.0

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return 1_763_900_000 + self.t


def test_timers_run_in_timeline_order_scaled_by_speed():
    clock = ManualClock()
    timers, ran = Timers(SimTime(clock, speed=10)), []
    timers.at(20.0, lambda: ran.append("at 20"))
    timers.at(5.0, lambda: timers.after(0, lambda: ran.append("chained")))
    timers.at(5.0, lambda: ran.append("at 5")).cancel()
    clock.t += 1.9  # 19 timeline seconds
    assert timers.run_due() == 2 and ran == ["chained"]
    clock.t += 0.1
    timers.run_due()
    assert ran == ["chained", "at 20"] and timers.next_due() is None


def test_history_chunks_split_large_chats_and_keep_newest_first():
    def chat(i: int, n: int) -> tuple[Chat, list[WorldMessage]]:
        return Chat(f"1555000{i:04d}@s.whatsapp.net"), [WorldMessage(f"M{i}-{k}", ts=TS + i * 10_000 + k)
                                                          for k in range(n)]

    chunks = historysync.initial_sync([chat(1, 1200), chat(2, 3), chat(3, 0)], per_chat=1000)
    assert [(c.sync_type, c.chunk_order, c.size) for c in chunks] == [
        ("INITIAL_BOOTSTRAP", 1, 2), ("RECENT", 1, 500), ("RECENT", 2, 500), ("RECENT", 3, 1)]
    assert [c.progress for c in chunks] == [0, 50, 99, 100]
    assert [(chat.jid[7:11], len(msgs)) for chat, msgs, _ in chunks[0].conversations] == [
        ("0002", 1), ("0001", 1), ("0003", 0)]  # most recent chat first; empty chats still named
    ids = [[(msgs[0].id, msgs[-1].id) for _, msgs, _ in c.conversations] for c in chunks[1:]]
    assert ids == [[("M2-0", "M2-1"), ("M1-701", "M1-1198")], [("M1-201", "M1-700")], [("M1-200", "M1-200")]]


NO_MORE, MORE = historysync.NO_MORE_ON_PRIMARY, historysync.MORE_ON_PRIMARY
OD_MORE = historysync.ON_DEMAND_MORE_ON_PRIMARY


@pytest.mark.parametrize("sizes, per_chat, ends", [
    # chat sizes (time-0 messages) -> per chat: the chunk that ends its transfer, and how
    ((0, 1, 3, 4), 3, [("INITIAL_BOOTSTRAP", 1, NO_MORE), ("INITIAL_BOOTSTRAP", 1, NO_MORE),
                       ("RECENT", 1, NO_MORE), ("RECENT", 1, MORE)]),  # 3 fits exactly, 4 is one too many
    ((1000,), 1000, [("RECENT", 2, NO_MORE)]),  # exactly fits, split across chunks: the oldest part ends it
    ((1001,), 1000, [("RECENT", 2, MORE)]),
    ((1200, 3), 1000, [("RECENT", 2, MORE), ("RECENT", 3, NO_MORE)]),  # the small chat split too
    ((1, 2), 1, [("INITIAL_BOOTSTRAP", 1, NO_MORE), ("INITIAL_BOOTSTRAP", 1, MORE)]),
    ((0, 2), 0, [("INITIAL_BOOTSTRAP", 1, NO_MORE), ("INITIAL_BOOTSTRAP", 1, MORE)]),  # nothing sent: still ends
])
def test_history_chunks_end_each_chat_on_the_part_with_its_oldest_message(sizes, per_chat, ends):
    chats = [(Chat(f"1555000{i:04d}@s.whatsapp.net"), [WorldMessage(f"M{i}-{k}", ts=TS + k) for k in range(n)])
             for i, n in enumerate(sizes)]
    chunks = historysync.initial_sync(chats, per_chat)
    for (chat, msgs), (sync_type, order, end) in zip(chats, ends):
        parts = [(c.sync_type, c.chunk_order, part) for c in chunks for part in c.conversations if part.chat == chat]
        assert [(t, o, p.end) for t, o, p in parts if p.end] == [(sync_type, order, end)]
        oldest_sent = msgs[-per_chat:][0].id if msgs and per_chat else None
        ending = next(p for _, _, p in parts if p.end)
        assert (ending.messages[0].id if ending.messages else None) == oldest_sent


@pytest.mark.parametrize("direction, reaches_first, end", [
    ("before", True, NO_MORE), ("before", False, OD_MORE), ("after", True, OD_MORE), ("after", False, OD_MORE)])
def test_on_demand_answers_say_nothing_older_remains_only_when_read_back_to_the_first_message(
        direction, reaches_first, end):
    assert historysync.on_demand_end(direction, reaches_first) == end


# --- connecting, history sync, on-demand history ---------------------------------------------


@run_async
async def test_history_sync_after_first_connect_holds_the_newest_per_chat():
    data = world(per_chat=300, generate={"chats": 4, "messagesPerChat": 400})
    async with Service(data) as sim:
        client, frames = await sim.online()
        kinds = summary(frames)
        assert kinds[0] == "Connected" and kinds[-1] == "OfflineSyncCompleted"
        batches = values(frames, m.HistoryBatch)
        for i, frame in enumerate(frames):  # a notification right before every chunk
            if isinstance(frame["value"], m.HistoryBatch):
                note = frames[i - 1]["value"]
                assert isinstance(note, m.ProtocolMessage) and note.kind == m.ProtocolKind.HISTORY_SYNC_NOTIFICATION
        types = [b.sync_type for b in batches]
        assert types == sorted(types, key=[m.HistorySyncType.INITIAL_BOOTSTRAP, m.HistorySyncType.RECENT].index)
        assert {m.HistorySyncType.INITIAL_BOOTSTRAP, m.HistorySyncType.RECENT} == set(types)
        assert all(len(b.messages) <= 500 for b in batches) and batches[-1].progress == 100
        got = [(msg.client_jid, msg.id) for b in batches for msg in b.messages]
        assert len(got) == len(set(got))
        expected = {(c.jid, msg.id) for c in sim.world.account(PHONE).chats for msg in c.messages[-300:]}
        assert set(got) == expected and len(expected) == 4 * 300 + 4
        names = {t.client_jid: t.display_name for b in batches for t in b.threads}
        assert names[ALICE] == "Alice" and names[CAROL] == "Carol"
        # A reconnect is no new pairing: no history sync again.
        await client.close()
        again, frames = await sim.online()
        assert summary(frames) == ["Connected", "OfflineSyncCompleted"]
        stats = await sim.stats()
        assert stats["connectionsOpened"] == 2 and stats["unacked"] == 0 and stats["pairings"] == 0


def history_syncs(frames: list[dict]) -> list:
    """The raw HistorySync protos among `frames` (what the normalizer reads the flags from)."""
    return [npb.HistorySync.FromString(wire.event_bytes(f)).Data for f in frames
            if f["op"] == "event" and f["kind"] == "HistorySync"]


@pytest.mark.parametrize("per_chat, alice_complete", [(3, True), (2, None)])  # Alice has 3 messages
@run_async
async def test_initial_sync_says_which_chats_it_holds_whole(per_chat, alice_complete):
    data = world(per_chat=per_chat, generate={"chats": 1, "messagesPerChat": 10})
    async with Service(data) as sim:
        _, frames = await sim.online()
        big = sim.world.account(PHONE).chats[-1].jid
        complete = {}
        for batch in values(frames, m.HistoryBatch):
            for thread in batch.threads:
                complete[thread.client_jid] = complete.get(thread.client_jid) or thread.history_complete
        assert complete == {ALICE: alice_complete, GROUP: True, CAROL: True, big: None}
        ends = [(c.ID, hs.Conversation.EndOfHistoryTransferType.Name(c.endOfHistoryTransferType))
                for sync in history_syncs(frames) for c in sync.conversations if c.endOfHistoryTransfer]
        assert sorted(ends) == sorted([(ALICE, NO_MORE if alice_complete else MORE), (GROUP, NO_MORE),
                                       (CAROL, NO_MORE), (big, MORE)])  # once per chat


@run_async
async def test_on_demand_history_walks_back_to_the_oldest_message():
    data = world(per_chat=20, generate={"chats": 1, "messagesPerChat": 230})
    async with Service(data) as sim:
        client, frames = await sim.online()
        chat = sim.world.account(PHONE).chats[-1]
        known = [msg for msg in values(frames, m.Message) if msg.client_jid == chat.jid]
        known += [msg for b in values(frames, m.HistoryBatch) for msg in b.messages if msg.client_jid == chat.jid]
        assert len(known) == 20
        oldest = min(known, key=lambda x: x.ts_client_ms)
        seen, requests = {msg.id for msg in known}, 0
        while True:
            reply, _ = await client.request("history", chat=chat.jid, anchor=oldest.id, count=80)
            requests += 1
            batch = (await client.until_value(m.HistoryBatch))[-1]["value"]
            assert batch.sync_type == m.HistorySyncType.ON_DEMAND and reply["ok"]
            assert reply["result"]["messages"] == len(batch.messages) <= 50
            assert {msg.sync_source for msg in batch.messages} <= {m.SyncSource.BACKFILL}
            reached_first = chat.messages[0].id in {msg.id for msg in batch.messages} | {oldest.id}
            assert [t.history_complete for t in batch.threads] == [True if reached_first else None]
            if not batch.messages:
                break
            assert all(msg.ts_client_ms <= oldest.ts_client_ms and msg.id not in seen for msg in batch.messages)
            seen |= {msg.id for msg in batch.messages}
            oldest = min(batch.messages, key=lambda x: x.ts_client_ms)
        assert seen == {msg.id for msg in chat.messages} and requests == 6  # 210 older: 50 × 4 + 10, then none
        # Unknown anchor or chat: ok, and an empty batch.
        for chat_jid, anchor, threads in ((chat.jid, "NOPE", [None]), (DAVE, "NOPE", [])):
            reply, _ = await client.request("history", chat=chat_jid, anchor=anchor, count=10)
            batch = (await client.until_value(m.HistoryBatch))[-1]["value"]
            assert reply["ok"] and batch.messages == () and batch.sync_type == m.HistorySyncType.ON_DEMAND
            assert [t.history_complete for t in batch.threads] == threads
        assert (await sim.stats())["historyRequests"] == 8


@run_async
async def test_on_demand_history_reads_forward_after_an_anchor():
    async with Service(world(per_chat=1)) as sim:
        client, _ = await sim.online()
        sent, _ = await client.request("send", to=ALICE, text="later")
        sent_id = sent["result"]["id"]

        async def ask(anchor: str, count: int, **direction: str) -> m.HistoryBatch:
            reply, _ = await client.request("history", chat=ALICE, anchor=anchor, count=count, **direction)
            batch = (await client.until_value(m.HistoryBatch))[-1]["value"]
            assert reply["ok"] and reply["result"]["messages"] == len(batch.messages)
            assert batch.sync_type == m.HistorySyncType.ON_DEMAND
            return batch

        cases = [  # anchor, count, direction -> ids, history_complete
            ("A1", 1, {"direction": "after"}, ["A2"], None),
            ("A1", 10, {"direction": "after"}, ["A2", "A3", sent_id], None),  # what was sent since, too
            (sent_id, 10, {"direction": "after"}, [], None),
            ("A1", 10, {"direction": "after"}, ["A2", "A3", sent_id], None),  # from the first: not "complete"
            ("A3", 1, {"direction": "before"}, ["A2"], None),
            ("A2", 5, {}, ["A1"], True),  # before by default; reaches the first message
            ("A1", 5, {"direction": "before"}, [], True),  # nothing older than the first
        ]
        for anchor, count, direction, ids, complete in cases:
            batch = await ask(anchor, count, **direction)
            assert sorted(msg.id for msg in batch.messages) == sorted(ids), (anchor, direction)
            assert [t.history_complete for t in batch.threads] == [complete], (anchor, direction)
        assert (await sim.stats())["historyRequests"] == len(cases)


# --- pairing ----------------------------------------------------------------------------


@run_async
async def test_pairing_by_scanning_the_displayed_qr():
    async with Service(world()) as sim:
        client = await sim.connect(NEW)  # named, but not paired in the world: QR codes
        first = await client.next()
        assert first["seq"] == 0 and isinstance(first["value"], m.QrCode) and len(first["value"].codes) == 3
        old_code = first["value"].codes[0]
        rotated = (await client.until_value(m.QrCode, timeout=2))[-1]  # 20 s / speed 50 later
        assert old_code not in rotated["value"].codes
        assert await sim.scan(NEW, old_code) == 404  # expired
        assert await sim.scan(NEW, "2@nope") == 404
        assert await sim.scan("15559999999", rotated["value"].codes[1]) == 404  # no such phone
        assert await sim.scan(NEW, rotated["value"].codes[1]) == 200
        frames = await client.until_value(m.OfflineSyncCompleted)
        pair = frames[0]["value"]
        assert isinstance(pair, m.PairSuccess) and (pair.jid, pair.business_name) == (f"{NEW}@s.whatsapp.net", "Shop B")
        assert frames[1]["op"] == "paired" and frames[1]["phone"] == NEW
        assert summary(frames[2:]) == ["Connected", "ProtocolMessage", "HistoryBatch", "ProtocolMessage",
                                       "HistoryBatch", "OfflineSyncCompleted"]
        token = frames[1]["token"]
        assert await sim.scan(NEW, rotated["value"].codes[0]) == 404  # that client paired: its codes are gone
        account = (await sim.get(f"/sim/world?account={NEW}"))["accounts"][0]
        assert account["paired"] is True and (await sim.stats(NEW))["pairings"] == 1
        # The token resumes the session: no QR, no second history sync.
        await client.close()
        again, frames = await sim.online(None, token=token)
        assert summary(frames) == ["Connected", "OfflineSyncCompleted"]


@run_async
async def test_pair_phone_code_pairs_like_a_qr_scan():
    async with Service(world()) as sim:
        client = await sim.connect()
        await client.until_value(m.QrCode)
        reply, _ = await client.request("pair_phone", phone=NEW)
        code = reply["result"]["code"]
        assert re.fullmatch(r"[1-9A-Z]{4}-[1-9A-Z]{4}", code)
        assert await sim.scan(PHONE, code) == 404  # issued for another phone
        assert await sim.scan(NEW, code.replace("-", "").lower()) == 200
        frames = await client.until_value(m.OfflineSyncCompleted)
        assert isinstance(frames[0]["value"], m.PairSuccess)
        reply, _ = await client.request("pair_phone", phone=NEW)
        assert reply["error"]["reason"] == wire.BAD_REQUEST  # not pairing any more


# --- acknowledgement and one socket per session ----------------------------------------------------


@run_async
async def test_unacknowledged_events_are_sent_again_after_a_reconnect():
    async with Service(world()) as sim:
        client = await sim.connect(PHONE, auto_ack=False)
        frames = await client.until_value(m.OfflineSyncCompleted)
        await client.send({"op": "ack", "seq": frames[0]["seq"]})  # only Connected was spooled
        await sim.inject(message_event(text="one"), message_event(text="two"))
        frames += await client.until(lambda f: getattr(f.get("value"), "body", None) == "two")
        await sim.wait_stats(lambda s: s["acked"] == frames[0]["seq"])
        await client.close()
        assert (await sim.stats())["unacked"] == len(frames) - 1
        again = await sim.connect(PHONE, auto_ack=False)
        resent = await again.until_value(m.Connected)
        assert [(f["seq"], f["data"]) for f in resent[:-1]] == [(f["seq"], f["data"]) for f in frames[1:]]
        assert resent[-1]["seq"] == frames[-1]["seq"] + 1
        assert [x.body for x in user_messages(resent)] == ["one", "two"]
        stats = await sim.stats()
        assert stats["eventsResent"] == len(frames) - 1 and stats["delivered"] == 2


@run_async
async def test_a_closed_socket_lingers_only_while_acks_are_outstanding():
    async with Service(world()) as sim:
        loop = asyncio.get_running_loop()
        client, _ = await sim.online(close_on_closing=False)  # everything acked
        await sim.inject({"account": PHONE, "event": "disconnect", "for": 10})
        await client.until(is_closing("disconnect"))
        start = loop.time()
        await client.until(lambda f: f["op"] == "_closed")
        assert loop.time() - start < 0.3
        await asyncio.sleep(0.25)
        client, frames = await sim.online(auto_ack=False, close_on_closing=False)
        await sim.inject({"account": PHONE, "event": "disconnect", "for": 10})
        await client.until(is_closing("disconnect"))
        await asyncio.sleep(0.3)
        assert not client.ws.closed  # waiting for the acks
        start = loop.time()
        await client.send({"op": "ack", "seq": frames[-1]["seq"]})
        await client.until(lambda f: f["op"] == "_closed")
        assert loop.time() - start < 0.3 and (await sim.stats())["unacked"] == 0


@run_async
async def test_a_second_client_replaces_the_first():
    async with Service(world()) as sim:
        older, _ = await sim.online()
        newer = await sim.connect(PHONE)
        frames = await older.until(lambda f: f["op"] == "_closed")
        assert frames[0]["seq"] == 0 and isinstance(frames[0]["value"], m.StreamReplaced)
        assert frames[1] == {"op": "closing", "reason": "stream_replaced", "retry_after_s": None}
        assert summary(await newer.until_value(m.OfflineSyncCompleted)) == ["Connected", "OfflineSyncCompleted"]
        stats = await sim.stats()
        assert (stats["streamReplaced"], stats["maxConcurrent"], stats["connectionsOpened"]) == (1, 2, 2)
        await sim.inject(message_event(text="for the new one"))
        assert [x.body for x in user_messages(await newer.until_value(m.Message))] == ["for the new one"]


# --- timeline events ----------------------------------------------------------------------


@run_async
async def test_live_messages_are_delivered_queued_or_dropped():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        before = time.time()
        await sim.inject(message_event(id="L1", text="live one"))
        live = user_messages(await client.until_value(m.Message))[0]
        assert (live.id, live.body, live.direction, live.client_jid) == ("L1", "live one", m.Direction.INBOUND, ALICE)
        assert before - 1 <= live.ts_client_ms / 1000 <= time.time() + 1
        await client.close()
        await sim.wait_stats(lambda s: not s["connected"])
        await sim.inject(message_event(id="Q1", text="queued"),
                         message_event(DAVE, id="D1", text="lost", offline="drop"),
                         message_event(GROUP, id="G2", sender=BOB, type="image", caption="look"))
        truth = await sim.messages()
        assert [truth[i]["via"] for i in ("L1", "Q1", "D1", "G2")] == ["live", "held", "dropped", "held"]
        assert truth["D1"]["chat"] == DAVE  # an unknown chat is created
        stats = await sim.stats()
        assert (stats["held"], stats["dropped"], stats["delivered"]) == (2, 1, 1)
        again, frames = await sim.online()
        assert summary(frames) == ["Connected", "Message", "Message", "OfflineSyncCompleted"]
        image = user_messages(frames)[1]
        assert (image.message_type, image.caption, image.sender_jid) == (m.MessageType.IMAGE, "look", BOB)
        assert frames[-1]["value"].count == 2
        truth = await sim.messages()
        assert [truth[i]["via"] for i in ("Q1", "D1", "G2")] == ["live", "dropped", "live"]


@run_async
async def test_receipts_move_the_status_forward_only():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        await sim.inject({"account": PHONE, "event": "receipt", "chat": ALICE, "ids": ["A2"], "type": "played"})
        receipt = values(await client.until_value(m.Receipt), m.Receipt)[0]
        assert (receipt.message_ids, receipt.kind, receipt.client_jid) == (("A2",), m.ReceiptKind.PLAYED, ALICE)
        assert abs(receipt.ts_ms / 1000 - time.time()) < 2
        await sim.inject({"account": PHONE, "event": "receipt", "chat": ALICE, "ids": ["A2"], "type": "delivered"})
        await client.until_value(m.Receipt)
        assert (await sim.messages())["A2"]["status"] == "played"


@run_async
async def test_disconnect_closes_and_refuses_reconnects_for_a_while():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        await sim.inject({"account": PHONE, "event": "disconnect", "for": 25})  # 0.5 s at speed 50
        closing = (await client.until(is_closing("disconnect")))[-1]
        assert closing["retry_after_s"] == pytest.approx(0.5)
        assert (await client.next())["op"] == "_closed"
        await sim.inject(message_event(id="Q1", text="while away"))
        refused = await sim.connect(PHONE)
        frames = await refused.until(lambda f: f["op"] == "_closed")
        assert frames[0]["op"] == "closing" and frames[0]["reason"] == "disconnect"
        assert 0 < frames[0]["retry_after_s"] < 0.5
        await asyncio.sleep(frames[0]["retry_after_s"] + 0.05)
        again, frames = await sim.online()
        assert [x.body for x in user_messages(frames)] == ["while away"] and frames[-1]["value"].count == 1
        stats = await sim.stats()
        assert (stats["connectionsRefused"], stats["connectionsOpened"], stats["maxConcurrent"]) == (1, 2, 1)


@run_async
async def test_degraded_session_heals_on_restart_and_delivers_held_messages():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        await sim.inject({"account": PHONE, "event": "degrade", "for": 1000, "healsOn": "restart"},
                         message_event(id="H1", text="held back"))
        frames = await client.quiet(0.3)  # 15 timeline seconds: protocol traffic only
        protocol = values(frames, m.ProtocolMessage)
        assert len(protocol) >= 3 and {p.kind for p in protocol} == {m.ProtocolKind.APP_STATE_SYNC_KEY_SHARE}
        assert not user_messages(frames)
        assert (await sim.messages())["H1"]["via"] == "held"
        assert (await sim.stats())["degraded"] == "restart"
        await client.close()
        again, frames = await sim.online()
        assert [x.id for x in user_messages(frames)] == ["H1"]
        assert (await sim.messages())["H1"]["via"] == "live" and (await sim.stats())["degraded"] is None
        assert not values(await again.quiet(0.1), m.ProtocolMessage)


@run_async
async def test_degraded_session_needing_repair_loses_held_messages():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        await sim.inject({"account": PHONE, "event": "degrade", "for": 1000, "healsOn": "repair"},
                         message_event(id="H1", text="held back"))
        await client.close()
        restarted = await sim.connect(PHONE)  # a restart does not help
        frames = await restarted.until_value(m.Connected) + await restarted.quiet(0.2)
        assert not user_messages(frames) and not values(frames, m.OfflineSyncCompleted)
        assert values(frames, m.ProtocolMessage)
        pairing = await sim.connect()
        code = (await pairing.until_value(m.QrCode))[-1]["value"].codes[0]
        assert await sim.scan(PHONE, code) == 200
        replaced = await restarted.until(lambda f: f["op"] == "_closed")
        assert values(replaced, m.StreamReplaced)
        frames = await pairing.until_value(m.OfflineSyncCompleted)
        assert frames[-1]["value"].count == 0 and not user_messages(frames)
        assert len(values(frames, m.HistoryBatch)) == 2  # a new pairing syncs history again
        assert (await sim.messages())["H1"]["via"] == "dropped"
        stats = await sim.stats()
        assert (stats["dropped"], stats["pairings"], stats["degraded"]) == (1, 1, None)


@run_async
async def test_degradation_ends_after_its_time_and_delivers_on_the_same_socket():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        await sim.inject({"account": PHONE, "event": "degrade", "for": 10}, message_event(id="H1", text="later"))
        frames = await client.until_value(m.Message, timeout=2)  # 10 timeline seconds = 0.2 s
        assert [x.id for x in user_messages(frames)] == ["H1"] and values(frames, m.ProtocolMessage)


@run_async
async def test_logout_ends_the_session_and_needs_a_new_pairing():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        await sim.inject({"account": PHONE, "event": "logout", "reason": "MAIN_DEVICE_GONE"})
        frames = await client.until(lambda f: f["op"] == "_closed")
        assert frames[0]["seq"] == 0 and frames[0]["value"] == m.LoggedOut("acct", reason="MAIN_DEVICE_GONE",
                                                                              on_connect=False)
        assert frames[1]["reason"] == "logged_out"
        assert (await sim.get(f"/sim/world?account={PHONE}"))["accounts"][0]["paired"] is False
        again = await sim.connect(PHONE)
        assert isinstance((await again.next())["value"], m.QrCode)
        # The client's own logout: its token stops working too.
        pairing = await sim.connect()
        code = (await pairing.until_value(m.QrCode))[-1]["value"].codes[0]
        assert await sim.scan(NEW, code) == 200
        token = next(f for f in await pairing.until_value(m.OfflineSyncCompleted) if f["op"] == "paired")["token"]
        reply, _ = await pairing.request("logout")
        assert reply["ok"]
        frames = await pairing.until(lambda f: f["op"] == "_closed")
        assert values(frames, m.LoggedOut)[0].reason == "LOGGED_OUT" and frames[-2]["reason"] == "logged_out"
        resumed = await sim.connect(None, token=token)
        assert isinstance((await resumed.next())["value"], m.QrCode)
        assert (await sim.stats(NEW))["logouts"] == 1


@run_async
async def test_ban_closes_and_refuses_until_it_expires():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        await sim.inject({"account": PHONE, "event": "ban", "for": 25, "code": "BLOCKED_BY_USERS"})
        frames = await client.until(lambda f: f["op"] == "_closed")
        ban = frames[0]["value"]
        assert isinstance(ban, m.TemporaryBan) and ban.code == "BLOCKED_BY_USERS" and ban.expires_in_s == 1
        assert frames[1]["reason"] == "banned" and frames[1]["retry_after_s"] == pytest.approx(0.5)
        refused = await sim.connect(PHONE)
        frames = await refused.until(lambda f: f["op"] == "_closed")
        assert isinstance(frames[0]["value"], m.TemporaryBan) and frames[1]["reason"] == "banned"
        await asyncio.sleep(frames[1]["retry_after_s"] + 0.05)
        await sim.online()


@run_async
async def test_traffic_sends_synthetic_messages_across_the_chats():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        await sim.inject({"account": PHONE, "event": "traffic", "rate": 20, "for": 2})  # 40 over 0.04 s
        frames: list[dict] = []
        while len(user_messages(frames)) < 40:
            frames += await client.until_value(m.Message)
        msgs = user_messages(frames)
        assert len({x.id for x in msgs}) == 40 and all(ID_RE.fullmatch(x.id) for x in msgs)
        assert all(x.direction == m.Direction.INBOUND and x.body for x in msgs)
        assert all(x.sender_jid for x in msgs if x.is_group)
        assert len({x.client_jid for x in msgs}) > 1
        truth = await sim.messages()
        assert all(truth[x.id]["via"] == "live" for x in msgs)
        assert not await client.quiet(0.1)


# --- the client's operations ----------------------------------------------------------------


@run_async
async def test_sends_get_receipts_and_become_ground_truth():
    async with Service(world()) as sim:
        client, _ = await sim.online()
        reply, _ = await client.request("send", to=ALICE, text="your order is ready")
        sent = reply["result"]
        assert reply["ok"] and ID_RE.fullmatch(sent["id"]) and abs(sent["ts"] - time.time()) < 2
        receipts = values(await client.until(
            lambda f: getattr(f.get("value"), "kind", None) == m.ReceiptKind.READ), m.Receipt)
        assert [(r.kind, r.message_ids) for r in receipts] == [
            (m.ReceiptKind.DELIVERED, (sent["id"],)), (m.ReceiptKind.READ, (sent["id"],))]
        quiet_reply, _ = await client.request("send", to=CAROL, text="no receipts here")
        group_reply, _ = await client.request("send", to=GROUP, text="hello team")
        await asyncio.sleep(0.1)
        truth = await sim.messages()
        assert {k: truth[sent["id"]][k] for k in ("fromMe", "text", "status", "via", "chat", "ts")} == {
            "fromMe": True, "text": "your order is ready", "status": "read", "via": "sent", "chat": ALICE,
            "ts": sent["ts"]}
        assert truth[quiet_reply["result"]["id"]]["status"] == "sent"
        assert truth[group_reply["result"]["id"]]["status"] == "read"
        bad, _ = await client.request("send", to="bob", text="x")
        assert bad["error"]["reason"] == wire.INVALID_RECIPIENT
        empty, _ = await client.request("send", to=ALICE, text="")
        assert empty["error"]["reason"] == wire.BAD_REQUEST
        read, _ = await client.request("mark_read", chat=ALICE, ids=["A1", "A3"])
        assert read["ok"]
        stats = await sim.stats()
        assert (stats["sent"], stats["markRead"]) == (3, 1)
        pairing = await sim.connect()  # not a session: cannot send
        reply, _ = await pairing.request("send", to=ALICE, text="x")
        assert reply["error"]["reason"] == wire.NOT_CONNECTED


@run_async
async def test_malformed_frames_get_bad_request_and_the_service_carries_on():
    async with Service(world()) as sim:
        client = Client(await sim.http.ws_connect(wire.SESSION_PATH), auto_ack=True)
        sim.clients.append(client)
        await client.ws.send_str("not json")
        await client.ws.send_str("[1, 2]")
        await client.ws.send_bytes(b"\x00\x01")
        await client.send({"op": "send", "req": 1, "to": ALICE, "text": "before hello"})
        await client.send({"op": "hello", "phone": 5})
        await client.send({"op": "dance", "req": 9})
        replies = [await client.next() for _ in range(6)]
        assert all(r["op"] == "reply" and r["error"]["reason"] == wire.BAD_REQUEST for r in replies)
        assert [r["req"] for r in replies] == [None, None, None, 1, None, 9]
        await client.send({"op": "hello", "phone": PHONE, "token": None})
        await client.until_value(m.OfflineSyncCompleted)
        for fields in ({"chat": ALICE, "anchor": "A3", "count": "x"}, {"chat": ALICE, "count": 5},
                       {"chat": ALICE, "anchor": "A3", "count": 5, "direction": "sideways"},
                       {"chat": ALICE, "anchor": "A3", "count": 5, "direction": "BEFORE"},
                       {"chat": ALICE, "anchor": "A3", "count": 5, "direction": ["after"]}):
            reply, _ = await client.request("history", **fields)
            assert reply["error"]["reason"] == wire.BAD_REQUEST
        assert "direction" in reply["error"]["message"]
        assert (await sim.stats())["historyRequests"] == 0
        await client.send({"op": "ack", "seq": -1})
        assert (await client.next())["error"]["reason"] == wire.BAD_REQUEST
        assert await sim.get("/sim/health") == {"ok": True}


@run_async
async def test_injected_events_are_validated():
    async with Service(world()) as sim:
        status, body = await sim.post("/sim/events", [{"account": PHONE, "event": "message", "chat": ALICE},
                                                      {"account": "15559999999", "event": "logout"}])
        assert status == 400
        assert any(e.startswith("events[0].text: required") for e in body["errors"])
        assert any(e.startswith("events[1].account: no account") for e in body["errors"])
        status, body = await sim.post("/sim/events", "{nope")
        assert status == 400
        status, body = await sim.post("/sim/events", {"account": PHONE, "event": "receipt", "chat": ALICE,
                                                      "ids": ["A1"], "type": "read"})
        assert status == 400 and "inbound" in body["errors"][0]
        status, _ = await sim.post(f"/sim/accounts/{PHONE}/scan", {"code": 5})
        assert status == 400


# --- the timeline clock, the command, and load ------------------------------------------------


@run_async
async def test_speed_compresses_the_timeline():
    data = world([{"at": 20, "account": PHONE, "event": "message", "chat": ALICE, "id": "T1", "text": "at 20"}])
    async with Service(data, speed=10) as sim:
        client, _ = await sim.online()
        frames = await client.until_value(m.Message, timeout=5)
        elapsed = asyncio.get_running_loop().time() - sim.started
        assert user_messages(frames)[0].id == "T1" and 1.8 <= elapsed <= 3.0


def _start_main(log: Path, *args: str) -> subprocess.Popen:
    """`main` in a process of its own; its log goes to a file (a pipe nobody reads could fill up)."""
    code = "import sys; from wasync.runtime.sim.service import main; sys.exit(main(sys.argv[1:]))"
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-c", code, *args], stderr=err, cwd=ROOT)


def _read_port(proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+) accounts=3 chats=\d+ messages=\d+", log.read_text())
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no startup line: {log.read_text()}")


def test_main_serves_the_demo_world_and_exits_0_on_sigterm(tmp_path):
    log = tmp_path / "sim.log"
    proc = _start_main(log, "--world", str(DEMO), "--host", "127.0.0.1", "--port", "0", "--speed", "10")
    try:
        port = _read_port(proc, log)

        async def session_through_sigterm() -> list[dict]:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                async with http.get("/sim/health") as resp:
                    assert await resp.json() == {"ok": True}
                client = Client(await http.ws_connect(wire.SESSION_PATH), auto_ack=True)
                await client.send({"op": "hello", "phone": PHONE, "token": None})
                await client.until_value(m.OfflineSyncCompleted)
                proc.send_signal(signal.SIGTERM)
                return await client.until(lambda f: f["op"] == "_closed", timeout=5)

        frames = asyncio.run(session_through_sigterm())
        assert {"op": "closing", "reason": "shutdown", "retry_after_s": None} in frames
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_main_rejects_a_bad_world_with_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"accounts": [{"phone": "123", "chats": [{"jid": "x"}]}]}))
    log = tmp_path / "sim.log"
    proc = _start_main(log, "--world", str(bad))
    assert proc.wait(timeout=15) == 2
    err = log.read_text()
    assert "accounts[0].phone: expected the phone number" in err and "accounts[0].chats[0].jid:" in err


@run_async
async def test_one_service_holds_200_accounts_with_live_traffic():
    rng = random.Random(3)
    phones = [f"1555{7000000 + i}" for i in range(200)]
    data = {"seed": 1, "timeline": [], "accounts": [
        {"phone": p, "initialSyncPerChat": 5, "chats": [
            {"jid": f"1556{rng.randrange(10**7):07d}@s.whatsapp.net", "name": "Contact",
             "messages": [{"id": f"H{p}", "ts": TS, "text": "old"}]},
            {"jid": f"120363{rng.randrange(10**11, 10**12)}@g.us", "name": "Group", "messages": [
                {"id": f"G{p}", "ts": TS, "sender": "15550000001@s.whatsapp.net", "text": "old too"}]}]}
        for p in phones]}
    async with Service(data, speed=1) as sim:
        clients = await asyncio.gather(*(sim.online(p) for p in phones))
        await sim.inject(*({"account": p, "event": "traffic", "rate": 1, "for": 3} for p in phones))

        async def three_messages(client: Client) -> list[m.Message]:
            got: list[m.Message] = []
            while len(got) < 3:
                got += user_messages(await client.until_value(m.Message, timeout=8))
            return got

        received = await asyncio.gather(*(three_messages(c) for c, _ in clients))
        assert all(len(r) == 3 for r in received)
        stats = await sim.get("/sim/stats")
        totals = stats["totals"]
        assert totals["delivered"] == 600 and totals["connectionsOpened"] == 200 and totals["held"] == 0
        await asyncio.sleep(0.2)  # the last acks
        assert (await sim.get("/sim/stats"))["totals"]["unacked"] == 0
