"""Builders shared by the store tests and the store benchmark."""
from __future__ import annotations

import itertools
import json
import time

from wasync.runtime.model import (
    Direction, Message, MessageEdit, MessageRevoke, MessageStatus, MessageType, Receipt, ReceiptKind, SyncSource,
)

T0 = 1_763_900_000_000  # ms
_ids = itertools.count(1)


def msg(account="acct1", chat="15552223333@s.whatsapp.net", id=None, ts=T0, body="hi", *,
        direction=Direction.INBOUND, status=None, source=SyncSource.REALTIME, **extra) -> Message:
    return Message(
        id=id or f"3EB0{next(_ids):012X}", account_id=account, client_jid=chat, direction=direction,
        message_type=extra.pop("message_type", MessageType.TEXT), ts_client_ms=ts, sync_source=source,
        body=body, status=status, is_group=chat.endswith("@g.us"), **extra)


def out(id, ts=T0, status=MessageStatus.SENT, **kw) -> Message:
    return msg(id=id, ts=ts, direction=Direction.OUTBOUND, status=status, **kw)


def receipt(ids, kind=ReceiptKind.READ, ts=T0 + 5000, account="acct1",
            chat="15552223333@s.whatsapp.net") -> Receipt:
    return Receipt(account_id=account, client_jid=chat, message_ids=tuple(ids), kind=kind, ts_ms=ts)


def edit(target, body, ts=T0 + 9000, account="acct1", chat="15552223333@s.whatsapp.net") -> MessageEdit:
    return MessageEdit(account_id=account, client_jid=chat, target_id=target, new_body=body, new_caption=None,
                       edited_at_ms=ts)


def revoke(target, ts=T0 + 9500, account="acct1", chat="15552223333@s.whatsapp.net") -> MessageRevoke:
    return MessageRevoke(account_id=account, client_jid=chat, target_id=target, revoked_at_ms=ts)


def race_for_lease(path, name, rounds, results):
    """Child process of the lease race test: take the lease as often as it can, each time
    against what it has just read (the other process reads and writes in between)."""
    from wasync.runtime.store.sqlite import SqliteStore

    store = SqliteStore(path)
    got = []
    for n in range(rounds):
        now = time.time_ns() // 1_000_000
        lease = store.acquire_lease("shared", name, store.get_lease("shared"), now, 3)
        if lease:
            got.append((lease.epoch, lease.holder, now))
            if n % 3 == 0:
                store.release_lease("shared", name, lease.epoch)
    store.close()
    results.put(json.dumps(got))


def plant_account(store, doc: dict) -> None:
    """Put an account document into a SqliteStore exactly as given: what another writer
    (an older version, another instance, the inbox app) may have left. Read-side tests
    use it; the daemon itself only writes accounts through create/update_account."""
    with store._write() as conn:
        store._put_account(conn, doc["accountId"], dict(doc))


def open_fresh_store(path: str, go, results) -> None:
    """In a spawned process: wait for `go`, open (and migrate) the store at `path`; put
    "ok" or the error into `results`."""
    from wasync.runtime.store.sqlite import SqliteStore

    go.wait(30)
    try:
        SqliteStore(path).close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {exc}")
