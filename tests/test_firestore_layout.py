"""FirestoreStore writes what the inbox app reads (SPEC §2): documents written through
the store are read back with the plain google client, field by field. Also: thread
documents are coalesced, and no batch commit carries more than 500 writes."""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.batch import WriteBatch

from emulator import free_port
from store_fixtures import T0, msg, out, receipt
from wasync.runtime import config
from wasync.runtime.account import AccountPatch, HistorySyncResult, HistorySyncUpdate, Repair
from wasync.runtime.model import (
    AccountStatus, MessageStatus, MessageType, ReceiptKind, SyncSource, ThreadUpdate, thread_id,
)
from wasync.runtime.outbox import Claim, OutboxItem
from wasync.runtime.store.base import Fence, StoreError
from wasync.runtime.store.firestore import FirestoreStore
from wasync.runtime.store.firestore_wire import WriteEncoder, fast_set
from wasync.runtime.store.schema import ms_to_dt

pytestmark = pytest.mark.firestore

NOW = T0 + 60_000
CHAT = "15552223333@s.whatsapp.net"
GROUP = "120363000000000001@g.us"
TID = thread_id("acct1", CHAT)


@pytest.fixture
def store(firestore_project):
    s = FirestoreStore(project=firestore_project)
    yield s
    s.close()


@pytest.fixture
def db(firestore_project):
    client = firestore.Client(project=firestore_project)
    yield client
    client.close()


@pytest.fixture
def commits(monkeypatch):
    """Every batch commit made during the test, as its list of (operation, path)."""
    seen: list[list[tuple[str, str]]] = []
    real = WriteBatch.commit

    def commit(self, *args, **kwargs):
        seen.append([_operation(w) for w in self._write_pbs])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(WriteBatch, "commit", commit)
    return seen


def _operation(write) -> tuple[str, str]:
    pb = getattr(write, "_pb", write)  # proto-plus wrapper or raw protobuf
    kind = pb.WhichOneof("operation")
    name = pb.update.name if kind == "update" else pb.delete
    return kind, name.split("/documents/", 1)[1]


def read(db, *path) -> dict | None:
    snap = db.document(*path).get()
    return snap.to_dict() if snap.exists else None


def assert_types(doc: dict, **types) -> None:
    for key, kind in types.items():
        assert key in doc, f"{key} missing from {sorted(doc)}"
        if kind is datetime:
            assert isinstance(doc[key], datetime), (key, doc[key])
        else:  # exact: a bool is not an int here
            assert type(doc[key]) is kind, (key, type(doc[key]))


# --- messages ------------------------------------------------------------------------

MESSAGE_FIELDS = {"id", "waMessageId", "accountId", "clientJid", "direction", "senderJid", "pushName", "body",
                  "messageType", "mediaType", "mediaUrl", "mediaMimetype", "mediaFilename", "caption", "status",
                  "deliveredAt", "readAt", "playedAt", "tsClient", "tsClientMs", "tsServer", "createdAt",
                  "syncedAt", "syncSource",
                  # beyond SPEC §2, additive: the inbox ignores fields it does not know
                  "isGroup", "senderAltJid", "quotedMessageId", "editedAt", "revoked", "revokedAt"}


def test_message_document(store, db):
    m = msg(id="G1", chat=GROUP, body=None, message_type=MessageType.IMAGE, media_type="image",
            media_url="https://mmg.whatsapp.net/x", media_mimetype="image/jpeg", media_filename="menu.jpg",
            caption="menu", sender_jid="15550009999@s.whatsapp.net", push_name="Bob", status=MessageStatus.DELIVERED,
            source=SyncSource.HISTORY_SYNC)
    store.upsert_messages([m], NOW)
    store.apply_receipts([receipt(["G1"], ReceiptKind.READ, ts=T0 + 7000, chat=GROUP)], NOW + 1000)
    doc = read(db, "threads", thread_id("acct1", GROUP), "messages", "G1")
    assert set(doc) <= MESSAGE_FIELDS, set(doc) - MESSAGE_FIELDS
    assert_types(doc, id=str, waMessageId=str, accountId=str, clientJid=str, direction=str, senderJid=str,
                 pushName=str, messageType=str, mediaType=str, mediaUrl=str, mediaMimetype=str, mediaFilename=str,
                 caption=str, status=str, readAt=datetime, tsClient=str, tsClientMs=int, tsServer=datetime,
                 createdAt=datetime, syncedAt=datetime, syncSource=str, isGroup=bool)
    assert (doc["id"], doc["waMessageId"], doc["accountId"], doc["clientJid"]) == ("G1", "G1", "acct1", GROUP)
    assert (doc["direction"], doc["messageType"], doc["syncSource"], doc["status"]) == (
        "inbound", "image", "history_sync", "read")
    assert doc["tsClientMs"] == T0 and doc["tsClient"] == "2025-11-23T12:13:20.000Z"
    assert doc["readAt"] == ms_to_dt(T0 + 7000)
    assert doc["createdAt"] == doc["tsServer"] == ms_to_dt(NOW)  # first write: store time
    assert doc["syncedAt"] == ms_to_dt(NOW + 1000)  # every write
    assert "body" not in doc  # a None is left out, never stored as null


def test_receipt_before_its_message_is_a_pending_patch_not_a_ghost(store, db):
    result = store.apply_receipts([receipt(["D1"], ReceiptKind.READ, ts=T0 + 3000)], NOW)
    assert result.pending == 1
    assert read(db, "threads", TID, "messages", "D1") is None
    assert read(db, "threads", TID) is None
    pending = read(db, "pending_message_updates", f"{TID}__D1")
    assert_types(pending, accountId=str, threadId=str, messageId=str, patch=dict, updatedAt=datetime)
    assert (pending["accountId"], pending["threadId"], pending["messageId"]) == ("acct1", TID, "D1")
    assert pending["patch"] == {"status": "read", "readAt": ms_to_dt(T0 + 3000)}

    store.apply_receipts([receipt(["D1"], ReceiptKind.DELIVERED, ts=T0 + 2000)], NOW)
    assert read(db, "pending_message_updates", f"{TID}__D1")["patch"] == {
        "status": "read", "readAt": ms_to_dt(T0 + 3000), "deliveredAt": ms_to_dt(T0 + 2000)}

    store.upsert_messages([out("D1")], NOW + 1)
    assert read(db, "pending_message_updates", f"{TID}__D1") is None
    doc = read(db, "threads", TID, "messages", "D1")
    assert doc["status"] == "read" and doc["deliveredAt"] == ms_to_dt(T0 + 2000)


def test_pending_patch_written_by_another_process_is_found(firestore_project, store, db):
    """The store keeps an index of pending patches; one it did not write (another
    instance, before this one took the account over) is seen once the index is reloaded."""
    store.upsert_messages([msg(id="X0")], NOW)  # loads the (empty) index of acct1
    other = FirestoreStore(project=firestore_project)
    other.apply_receipts([receipt(["X1"], ReceiptKind.PLAYED)], NOW)
    other.close()
    store.upsert_messages([msg(id="X1")], NOW + 5000)  # index older than cache_ms (5 s): reloaded
    assert read(db, "threads", TID, "messages", "X1")["status"] == "played"
    assert read(db, "pending_message_updates", f"{TID}__X1") is None


def test_new_messages_are_created_without_reads_and_known_ones_merged(store, db, monkeypatch):
    reads = []
    real = firestore.Client.get_all

    def get_all(self, refs, *args, **kwargs):
        refs = list(refs)
        reads.extend(ref.path for ref in refs)
        return real(self, refs, *args, **kwargs)

    monkeypatch.setattr(firestore.Client, "get_all", get_all)
    first = [msg(id=f"N{n:04d}", ts=T0 + n, source=SyncSource.HISTORY_SYNC) for n in range(600)]
    store.upsert_messages(first, NOW)
    assert not [path for path in reads if "/messages/" in path]  # created, nothing read
    # 300 known (a realtime copy with a push name) + 300 new, in one call: the create of
    # the first chunk fails as a whole and the call falls back to read-merge-write
    again = [m.with_(sync_source=SyncSource.REALTIME, push_name="Ann") for m in first[300:]]
    new = [msg(id=f"N{n:04d}", ts=T0 + n) for n in range(600, 900)]
    result = store.upsert_messages(again + new, NOW + 1000)
    assert result.messages == 600
    docs = {s.id: s.to_dict() for s in db.collection("threads", TID, "messages").stream()}
    assert len(docs) == 900
    known = docs["N0450"]
    assert known["syncSource"] == "history_sync" and known["pushName"] == "Ann"  # first source kept, field added
    assert known["createdAt"] == ms_to_dt(NOW) and known["syncedAt"] == ms_to_dt(NOW + 1000)
    assert docs["N0700"]["createdAt"] == ms_to_dt(NOW + 1000)


# --- threads -----------------------------------------------------------------------------

THREAD_FIELDS = {"accountId", "clientJid", "displayName", "lastMessageAt", "lastMessageAtMs", "lastMessagePreview",
                 "lastBackfillAt", "isGroup", "lastMessageId", "updatedAt"}


def test_thread_document(store, db):
    store.upsert_messages([msg(id="T1", ts=T0 + 1000, body="y" * 150)], NOW)
    store.update_threads([ThreadUpdate("acct1", CHAT, display_name="Alice", last_backfill_at_ms=NOW)], NOW + 5000)
    doc = read(db, "threads", TID)
    assert set(doc) == THREAD_FIELDS
    assert_types(doc, accountId=str, clientJid=str, displayName=str, lastMessageAt=datetime, lastMessageAtMs=int,
                 lastMessagePreview=str, lastBackfillAt=datetime, isGroup=bool, lastMessageId=str,
                 updatedAt=datetime)
    assert (doc["accountId"], doc["clientJid"], doc["displayName"], doc["isGroup"]) == ("acct1", CHAT, "Alice", False)
    assert doc["lastMessageAtMs"] == T0 + 1000 and doc["lastMessageAt"] == ms_to_dt(T0 + 1000)
    assert doc["lastMessagePreview"] == "y" * 100 and doc["lastMessageId"] == "T1"
    assert doc["lastBackfillAt"] == ms_to_dt(NOW) and doc["updatedAt"] == ms_to_dt(NOW + 5000)


def test_hot_thread_is_written_at_most_once_per_interval(store, db, commits):
    for i in range(30):  # one message every 100 ms for 3 s
        store.upsert_messages([msg(id=f"H{i:02d}", ts=T0 + i)], NOW + i * 100)
        if i == 15:  # held, not written: Firestore still shows message 10
            assert read(db, "threads", TID)["lastMessageId"] == "H10"
    thread_writes = [path for batch in commits for _, path in batch if path == f"threads/{TID}"]
    assert len(thread_writes) == 3  # first at once, then at 1000 ms and 2000 ms
    store.flush()
    thread_writes = [path for batch in commits for _, path in batch if path == f"threads/{TID}"]
    assert len(thread_writes) == 4
    assert read(db, "threads", TID)["lastMessageId"] == "H29"


def test_a_new_thread_is_written_at_once_while_others_are_held(store, db):
    store.upsert_messages([msg(id="A1", ts=T0)], NOW)
    store.upsert_messages([msg(id="A2", ts=T0 + 1), msg(id="B1", chat="15550001111@s.whatsapp.net")], NOW + 10)
    assert read(db, "threads", TID)["lastMessageId"] == "A1"  # held
    assert read(db, "threads", thread_id("acct1", "15550001111@s.whatsapp.net"))["lastMessageId"] == "B1"
    assert store.get_thread(TID)["lastMessageId"] == "A2"  # readers never see a held-back thread


def test_batches_stay_within_500_writes(store, db, commits):
    chats = [f"1555{n:07d}@s.whatsapp.net" for n in range(60)]
    messages = [msg(id=f"M{n:04d}", chat=chats[n % 60], ts=T0 + n) for n in range(1200)]
    early = [receipt([m.id], ReceiptKind.READ, chat=m.client_jid) for m in messages[::2]][:700]
    assert store.apply_receipts(early, NOW).pending == len(early)
    store.upsert_messages(messages, NOW + 1)
    store.flush()
    assert commits and max(len(batch) for batch in commits) <= 500
    assert sum(len(batch) for batch in commits) == len(early) + 1200 + len(early) + 60
    for batch in commits:  # a pending patch is deleted in the batch that folds it in
        written = {path for kind, path in batch if kind == "update"}
        for kind, path in batch:
            if kind == "delete":
                tid, message_id = path.removeprefix("pending_message_updates/").rsplit("__", 1)
                assert f"threads/{tid}/messages/{message_id}" in written
    assert list(db.collection("pending_message_updates").stream()) == []
    statuses = [s.to_dict().get("status") for s in db.collection_group("messages").stream()]
    assert len(statuses) == 1200 and statuses.count("read") == len(early)


# --- accounts, leases, locks, outbox -------------------------------------------------------


def test_account_document(store, db):
    assert store.create_account("acct1", "15550001111", NOW)
    first = HistorySyncUpdate(NOW, HistorySyncResult(40, 2, 0, 42, False), (("spool-a", 5),))
    store.update_account("acct1", AccountPatch(status=AccountStatus.CONNECTING, history=first), NOW)
    second = HistorySyncUpdate(NOW + 500, HistorySyncResult(1, 0, 0, 1, False), (("spool-a", 6), ("spool-a", 7)))
    store.update_account("acct1", AccountPatch(status=AccountStatus.CONNECTED, realtime_ingest_ms=NOW + 900,
                                               realtime_message_ms=NOW + 800, history=second,
                                               repair=Repair(True, "logged out", NOW)), NOW + 1000)
    doc = read(db, "accounts", "acct1")
    assert_types(doc, accountId=str, status=str, historySyncCount=int, lastRealtimeIngestAt=datetime,
                 lastRealtimeMessageAt=datetime, lastHistorySyncAt=datetime, lastHistorySyncResult=dict,
                 repairRequestedAt=datetime, needsRepair=bool, createdAt=datetime, updatedAt=datetime)
    assert doc["historySyncCount"] == 3 and doc["updatedAt"] == ms_to_dt(NOW + 1000)
    assert doc["lastRealtimeIngestAt"] == ms_to_dt(NOW + 900) and doc["lastRealtimeMessageAt"] == ms_to_dt(NOW + 800)
    # a map is replaced, not deep-merged: nothing of the first result is left
    assert doc["lastHistorySyncResult"] == {"saved": 1, "skipped": 0, "errors": 0, "total": 1, "dryRun": False}
    assert doc["historySyncCountMarks"] == {"spool-a": 7}


def test_lease_and_instance_documents(store, db):
    lease = store.acquire_lease("acct1", "i1", None, NOW, 15_000)
    store.renew_leases([lease], NOW + 5000, 15_000)
    lease = read(db, "leases", "acct1")
    assert lease == {"holder": "i1", "epoch": 1, "expiresAtMs": NOW + 20_000, "renewedAtMs": NOW + 5000}
    assert_types(lease, holder=str, epoch=int, expiresAtMs=int, renewedAtMs=int)
    store.release_lease("acct1", "i1", 1)
    assert read(db, "leases", "acct1")["expiresAtMs"] == 0
    store.heartbeat_instance("host-1", "boot-a", NOW, T0, "0.1.0", 7)
    doc = read(db, "instances", "host-1")
    assert_types(doc, startedAt=datetime, heartbeatAtMs=int, version=str, accounts=int, incarnation=str)
    assert doc["startedAt"] == ms_to_dt(T0) and doc["heartbeatAtMs"] == NOW and doc["accounts"] == 7


@pytest.mark.parametrize("job, collection, prefix", [("backfill", "whatsapp_backfill_locks", "autoBackfillLease"),
                                                     ("recent_sync", "whatsapp_recent_sync_locks", "recentSyncLease")])
def test_job_lock_documents(store, db, job, collection, prefix):
    store.create_account("acct1", None, NOW)
    lease = store.acquire_lease("acct1", "i1", None, NOW, 15_000)
    store.acquire_job_lock(job, "acct1", "i1", NOW, 60_000, fence=Fence("i1", lease.epoch))
    store.acquire_job_lock(job, "acct1", "i1", NOW + 1000, 60_000)  # extended: startedAt stays
    lock = read(db, collection, "acct1")
    assert lock == {"ownerId": "i1", "expiresAtMs": NOW + 61_000, "startedAt": ms_to_dt(NOW)}
    account = read(db, "accounts", "acct1")
    assert account[prefix + "Until"] == ms_to_dt(NOW + 61_000) and account[prefix + "Holder"] == "i1"
    assert account[prefix + "AcquiredAt"] == ms_to_dt(NOW)
    assert store.release_job_lock(job, "acct1", "i1") is True
    assert read(db, collection, "acct1") is None
    account = read(db, "accounts", "acct1")
    assert account[prefix + "Until"] is None and account[prefix + "Holder"] is None


def test_released_job_lock_of_a_deleted_account_does_not_revive_it(store, db):
    store.acquire_job_lock("backfill", "acct1", "i1", NOW, 60_000)
    store.delete_account("acct1")
    assert store.release_job_lock("backfill", "acct1", "i1") is True
    assert read(db, "accounts", "acct1") is None


def test_outbox_document(store, db):
    store.enqueue_outbox(OutboxItem(id="o1", account_id="acct1", to_jid=CHAT, text="hello", created_at_ms=NOW,
                                    client_message_id="k1"), NOW)
    doc = read(db, "outbox", "o1")
    assert doc == {"id": "o1", "accountId": "acct1", "to": CHAT, "text": "hello", "status": "queued",
                   "clientMessageId": "k1", "attempts": 0, "nextAttemptAtMs": 0, "claimedBy": None,
                   "claimEpoch": None, "claimId": None, "waMessageId": None, "sentAtMs": None, "error": None,
                   "createdAtMs": NOW, "updatedAtMs": None}
    lease = store.acquire_lease("acct1", "i1", None, NOW, 15_000)
    store.claim_outbox("acct1", Claim("i1", lease.epoch, "c1"), NOW + 1, 10, resend_safe=True)
    doc = read(db, "outbox", "o1")
    assert (doc["status"], doc["claimedBy"], doc["claimEpoch"], doc["claimId"], doc["attempts"]) == (
        "sending", "i1", 1, "c1", 1)
    store.record_outbox_sent("o1", "3EB0SENT", NOW + 2, NOW + 3)
    doc = read(db, "outbox", "o1")
    assert (doc["status"], doc["waMessageId"], doc["sentAtMs"], doc["updatedAtMs"]) == ("sent", "3EB0SENT", NOW + 2,
                                                                                          NOW + 3)
    assert read(db, "threads", TID, "messages", "o1") is None
    sent = read(db, "threads", TID, "messages", "3EB0SENT")
    assert (sent["status"], sent["syncSource"], sent["outboxId"], sent["body"]) == ("sent", "outbox", "o1", "hello")


# --- encoding, settings, failures -------------------------------------------------------------


def test_fast_encoding_matches_the_client(db):
    ref = db.document("threads", TID, "messages", "E1")
    doc = {"s": "x", "none": None, "yes": True, "n": 5, "big": 2 ** 62, "neg": -3, "f": 1.5,
           "aware": datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc),
           "naive": datetime(2024, 1, 2, 3, 4, 5, 678001), "old": datetime(1960, 1, 1, tzinfo=timezone.utc),
           "read_back": DatetimeWithNanoseconds(2024, 1, 2, 3, 4, 5, nanosecond=123456789, tzinfo=timezone.utc),
           "map": {"a": 1, "b": {"c": [1, "x", None]}}, "list": [], "empty": {}}
    [expected] = _helpers.pbs_for_set_no_merge(ref._document_path, doc)
    assert WriteEncoder().write(ref, doc) == expected._pb
    [expected] = _helpers.pbs_for_create(ref._document_path, doc)
    assert WriteEncoder().write(ref, doc, create=True) == expected._pb


def test_fast_set_falls_back_for_sentinels(db):
    batch = db.batch()
    fast_set(batch, WriteEncoder(), db.document("accounts", "x"), {"at": firestore.SERVER_TIMESTAMP, "n": firestore.Increment(1)})
    batch.commit()
    doc = read(db, "accounts", "x")
    assert isinstance(doc["at"], datetime) and doc["n"] == 1


def test_from_settings_uses_the_emulator_without_leaving_the_variable_set(firestore_emulator, firestore_project,
                                                                         monkeypatch):
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")
    settings = config.load({"WASYNC_STORE": "firestore", "GOOGLE_CLOUD_PROJECT": firestore_project,
                            "FIRESTORE_EMULATOR_HOST": firestore_emulator.host})
    store = FirestoreStore.from_settings(settings)
    assert "FIRESTORE_EMULATOR_HOST" not in os.environ
    store.create_account("acct1", None, NOW)
    assert store.get_account("acct1")["status"] == "pairing" and store.ping() is True
    store.close()


def test_an_unreachable_store_pings_false_and_raises_store_error(firestore_emulator):
    settings = config.load({"WASYNC_STORE": "firestore", "GOOGLE_CLOUD_PROJECT": "nowhere",
                            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{free_port()}"})
    store = FirestoreStore.from_settings(settings, call_timeout_s=1.0)
    started = time.monotonic()
    assert store.ping() is False
    with pytest.raises(StoreError):
        store.get_account("acct1")
    with pytest.raises(StoreError):
        store.upsert_messages([msg(id="U1")], NOW)
    assert time.monotonic() - started < 15  # bounded, not the client's 60-300 s retries
    store.close()  # nothing is held back: the failed upsert never reached its thread documents


def test_the_emulator_client_reaches_the_emulator_named_in_settings_without_the_environment(
        firestore_emulator, firestore_project, monkeypatch):
    """Settings may name the emulator without FIRESTORE_EMULATOR_HOST in the environment (the
    client reads only that); the process environment is never changed for it."""
    from wasync.runtime.store.firestore_wire import emulator_client

    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")
    client = emulator_client(firestore_project, firestore_emulator.host)
    client.collection("probe").document("p1").set({"n": 1}, timeout=10)
    assert client.collection("probe").document("p1").get(timeout=10).to_dict() == {"n": 1}
    assert "FIRESTORE_EMULATOR_HOST" not in os.environ
    client.close()
