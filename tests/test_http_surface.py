"""The product surface over real loopback HTTP: the read API (paging), send-message and
the outbox routes, and the hardening (JSON only, rate limit, no CORS, headers, the token
never logged). The daemon side is test_http_app's StoreControl: a real SqliteStore."""
from __future__ import annotations

import logging

import pytest

from test_http_app import AUTH, TOKEN, control, error_of, serve  # noqa: F401  (control is a fixture)
from store_fixtures import T0, msg
from wasync.http.ratelimit import RateLimiter
from wasync.runtime.outbox import MAX_TEXT_CHARS, OutboxStatus

CHAT = "15552223333@s.whatsapp.net"


@pytest.fixture
def stocked(control):  # noqa: F811
    control.store.create_account("a1", "15550001111", T0)
    chats = [f"1555300{i:04d}@s.whatsapp.net" for i in range(7)]
    control.store.upsert_messages([msg(account="a1", chat=c, id=f"T{i}", ts=T0 + i * 1000)
                                   for i, c in enumerate(chats)], T0)
    control.store.upsert_messages([msg(account="a1", chat=CHAT, id=f"M{i:02d}", ts=T0 + 50_000 + i)
                                   for i in range(9)], T0)
    control.store.flush()
    return control


# --- read API ----------------------------------------------------------------------------------


def test_threads_page_newest_first_with_opaque_cursors(stocked):
    async def body(client):
        seen, cursor = [], None
        while True:
            query = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            resp = await client.get("/api/whatsapp/threads/a1", headers=AUTH, params=query)
            assert resp.status == 200, await resp.text()
            data = await resp.json()
            assert data["success"] is True and data["accountId"] == "a1"
            seen += [t["clientJid"] for t in data["threads"]]
            cursor = data["nextCursor"]
            if cursor is None:
                break
        assert seen[0] == CHAT and len(seen) == 8 == len(set(seen))
        resp = await client.get("/api/whatsapp/threads/a1?orderBy=lastMessageAt&limit=1", headers=AUTH)
        assert (await resp.json())["threads"][0]["clientJid"] == CHAT

    serve(stocked, body)


def test_messages_page_by_thread_id_or_chat_jid(stocked):
    async def body(client):
        first = await (await client.get(f"/api/whatsapp/messages/a1/a1__{CHAT}?limit=4", headers=AUTH)).json()
        assert [m["id"] for m in first["messages"]] == ["M08", "M07", "M06", "M05"]
        assert first["threadId"] == f"a1__{CHAT}"
        rest = await (await client.get(f"/api/whatsapp/messages/a1/{CHAT}", headers=AUTH,
                                       params={"cursor": first["nextCursor"]})).json()
        assert [m["id"] for m in rest["messages"]] == [f"M0{i}" for i in range(4, -1, -1)]
        assert rest["nextCursor"] is None
        m = rest["messages"][0]
        assert {"id", "accountId", "clientJid", "direction", "body", "tsClient", "tsClientMs", "syncSource"} <= set(m)

    serve(stocked, body)


@pytest.mark.parametrize("path,code,status", [
    ("/api/whatsapp/threads/a1?limit=0", "invalid_limit", 400),
    ("/api/whatsapp/threads/a1?limit=501", "invalid_limit", 400),
    ("/api/whatsapp/threads/a1?limit=abc", "invalid_limit", 400),
    ("/api/whatsapp/threads/a1?cursor=not-a-cursor", "invalid_cursor", 400),
    ("/api/whatsapp/threads/a1?orderBy=name", "invalid_order", 400),
    ("/api/whatsapp/threads/a1?sort=x", "unknown_parameter", 400),
    ("/api/whatsapp/threads/nobody", "unknown_account", 404),
    ("/api/whatsapp/threads/bad__id", "invalid_account_id", 400),
    ("/api/whatsapp/messages/a1/other__15552223333@s.whatsapp.net", "invalid_thread_id", 400),
    ("/api/whatsapp/messages/a1/15552223333@s.whatsapp.net?cursor=W1swXQ", "invalid_cursor", 400),
    ("/api/whatsapp/messages/nobody/15552223333@s.whatsapp.net", "unknown_account", 404),
])
def test_read_api_refuses_bad_input(stocked, path, code, status):
    async def body(client):
        await error_of(await client.get(path, headers=AUTH), status, code)

    serve(stocked, body)


# --- send-message and the outbox -----------------------------------------------------------------


def test_send_message_stores_it_queued_and_answers_with_it(stocked):
    async def body(client):
        resp = await client.post("/api/whatsapp/send-message", headers=AUTH,
                                 json={"accountId": "a1", "to": "+1 555 222 3333", "text": "your order is ready",
                                       "clientMessageId": "order-77"})
        assert resp.status == 202, await resp.text()
        data = await resp.json()
        message, item = data["message"], data["outbox"]
        assert data["created"] is True
        assert (message["status"], message["syncSource"], message["direction"], message["clientJid"],
                message["body"], message["outboxStatus"]) == ("queued", "outbox", "outbound", CHAT,
                                                              "your order is ready", "queued")
        assert item["id"] == message["id"] and item["status"] == "queued" and item["clientMessageId"] == "order-77"
        # The same clientMessageId again: the same item, nothing new.
        again = await (await client.post("/api/whatsapp/send-message", headers=AUTH,
                                         json={"accountId": "a1", "to": CHAT, "text": "your order is ready",
                                               "clientMessageId": "order-77"})).json()
        assert again["created"] is False and again["outbox"]["id"] == item["id"]
        await error_of(await client.post("/api/whatsapp/send-message", headers=AUTH,
                                         json={"accountId": "a1", "to": CHAT, "text": "something else",
                                               "clientMessageId": "order-77"}), 409, "client_message_id_reused")
        got = await (await client.get(f"/api/whatsapp/outbox/items/{item['id']}", headers=AUTH)).json()
        assert got["item"]["status"] == "queued"
        listed = await (await client.get("/api/whatsapp/outbox/a1?status=queued", headers=AUTH)).json()
        assert [i["id"] for i in listed["items"]] == [item["id"]]
        dash = await (await client.get("/api/status/dashboard", headers=AUTH)).json()
        assert dash["accounts"][0]["outbox"] == {"queued": 1, "sending": 0, "unknown": 0}
        # Only unknown or failed items wait for a decision.
        await error_of(await client.post(f"/api/whatsapp/outbox/items/{item['id']}/decide", headers=AUTH,
                                         json={"action": "abandon"}), 409, "not_waiting_for_a_decision")
        await error_of(await client.post(f"/api/whatsapp/outbox/items/{item['id']}/decide", headers=AUTH,
                                         json={"action": "maybe"}), 400, "invalid_body")
        await error_of(await client.get("/api/whatsapp/outbox/items/3EB0NOPE", headers=AUTH), 404, "unknown_item")
        await error_of(await client.get("/api/whatsapp/outbox/a1?status=lost", headers=AUTH), 400, "invalid_status")

    serve(stocked, body)
    assert [i.status for i in stocked.store.list_outbox("a1", list(OutboxStatus), 10)] == [OutboxStatus.QUEUED]


BAD_SENDS = [
    ({"to": CHAT, "text": "x"}, "missing_field"),
    ({"accountId": "a1", "text": "x"}, "missing_field"),
    ({"accountId": "a1", "to": CHAT}, "missing_field"),
    ({"accountId": "a1", "to": CHAT, "text": "x", "media": "y"}, "unknown_field"),
    ({"accountId": "a1", "to": "alice", "text": "x"}, "invalid_recipient"),
    ({"accountId": "a1", "to": "123", "text": "x"}, "invalid_recipient"),
    ({"accountId": "a1", "to": "status@broadcast", "text": "x"}, "invalid_recipient"),
    ({"accountId": "a1", "to": "1555@s.whatsapp.net", "text": "x"}, "invalid_recipient"),
    ({"accountId": "a1", "to": 15552223333, "text": "x"}, "invalid_recipient"),
    ({"accountId": "a1", "to": CHAT, "text": ""}, "invalid_text"),
    ({"accountId": "a1", "to": CHAT, "text": "   "}, "invalid_text"),
    ({"accountId": "a1", "to": CHAT, "text": 5}, "invalid_text"),
    ({"accountId": "a1", "to": CHAT, "text": "a\x00b"}, "invalid_text"),
    ({"accountId": "a1", "to": CHAT, "text": "x" * (MAX_TEXT_CHARS + 1)}, "text_too_long"),
    ({"accountId": "a1", "to": CHAT, "text": "x", "clientMessageId": "has space"}, "invalid_client_message_id"),
    ({"accountId": "a1", "to": CHAT, "text": "x", "clientMessageId": ""}, "invalid_client_message_id"),
    ({"accountId": "bad__id", "to": CHAT, "text": "x"}, "invalid_account_id"),
]


@pytest.mark.parametrize("payload,code", BAD_SENDS, ids=[c for _, c in BAD_SENDS])
def test_bad_sends_are_400_and_nothing_is_stored(stocked, payload, code):
    async def body(client):
        await error_of(await client.post("/api/whatsapp/send-message", headers=AUTH, json=payload), 400, code)

    serve(stocked, body)
    assert not any(call[0] == "send" for call in stocked.calls)
    assert stocked.store.count_outbox() == {}


def test_send_to_an_unknown_account_is_404(stocked):
    async def body(client):
        await error_of(await client.post("/api/whatsapp/send-message", headers=AUTH,
                                         json={"accountId": "nobody", "to": CHAT, "text": "x"}), 404, "unknown_account")

    serve(stocked, body)
    assert stocked.store.count_outbox() == {}


def test_a_text_at_the_limit_is_accepted(stocked):
    async def body(client):
        resp = await client.post("/api/whatsapp/send-message", headers=AUTH,
                                 json={"accountId": "a1", "to": CHAT, "text": "é" * MAX_TEXT_CHARS})
        assert resp.status == 202

    serve(stocked, body)


# --- hardening ---------------------------------------------------------------------------------------


def test_bodies_must_be_json(stocked):
    async def body(client):
        resp = await client.post("/api/whatsapp/accounts", headers={**AUTH, "Content-Type": "text/plain"},
                                 data=b'{"accountId": "x1"}')
        await error_of(resp, 415, "unsupported_media_type")
        resp = await client.post("/api/whatsapp/accounts", headers=AUTH, data={"accountId": "x1"})  # a form post
        await error_of(resp, 415, "unsupported_media_type")

    serve(stocked, body)
    assert stocked.store.get_account("x1") is None


def test_mutating_requests_are_rate_limited_per_token(stocked):
    async def body(client):
        statuses = []
        for _ in range(8):
            resp = await client.delete("/api/whatsapp/accounts/nobody", headers=AUTH)
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                await error_of(resp, 429, "rate_limited")
        assert statuses[:5] == [404] * 5 and statuses[-1] == 429
        # Reads are not limited.
        assert (await client.get("/api/whatsapp/accounts", headers=AUTH)).status == 200

    serve(stocked, body, env={"WASYNC_ADMIN_RATE_PER_MINUTE": "6"})


def test_rate_limiter_refills_and_keys_are_separate():
    limiter = RateLimiter(per_minute=60, burst=2)
    a, b = RateLimiter.key("token-a"), RateLimiter.key("token-b")
    assert "token-a" not in a
    assert [limiter.take(a, 0.0), limiter.take(a, 0.0)] == [0.0, 0.0]
    assert limiter.take(a, 0.0) == pytest.approx(1.0)  # a token a second
    assert limiter.take(b, 0.0) == 0.0  # another caller has its own bucket
    assert limiter.take(a, 1.0) == 0.0 and limiter.take(a, 1.0) > 0
    assert limiter.take(a, 100.0) == 0.0 and limiter.take(a, 100.0) == 0.0 and limiter.take(a, 100.0) > 0  # burst cap


def test_no_cors_and_safe_headers(stocked):
    async def body(client):
        resp = await client.options("/api/whatsapp/accounts", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        assert resp.status in (401, 405) and "Access-Control-Allow-Origin" not in resp.headers
        resp = await client.get("/api/whatsapp/accounts", headers={**AUTH, "Origin": "https://evil.example"})
        assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        health = await client.get("/health")
        assert health.headers["X-Content-Type-Options"] == "nosniff"

    serve(stocked, body)


def test_the_token_is_never_logged(stocked, caplog):
    caplog.set_level(logging.DEBUG)

    async def body(client):
        await client.get("/api/whatsapp/accounts", headers=AUTH)
        await client.get("/api/whatsapp/accounts", headers={"Authorization": "Bearer wrong-" + TOKEN})
        await client.post("/api/whatsapp/accounts", headers=AUTH, json={"accountId": "z1"})
        await client.get(f"/api/whatsapp/threads/a1?cursor={TOKEN}", headers=AUTH)
        await client.get("/api/status/dashboard", headers=AUTH)

    serve(stocked, body)
    assert caplog.records
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]


@pytest.mark.parametrize("payload", [{"newPairing": "yes"}, {"fresh": True}, [True]])
def test_regenerate_qr_takes_only_a_new_pairing_flag(stocked, payload):
    async def body(client):
        code = "invalid_json" if isinstance(payload, list) else "invalid_body"
        await error_of(await client.post("/api/whatsapp/regenerate-qr/a1", headers=AUTH, json=payload), 400, code)

    serve(stocked, body)
