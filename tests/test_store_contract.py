"""The Store contract: the same tests against SqliteStore and FirestoreStore (emulator)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from store_fixtures import T0, edit, msg, out, receipt, revoke
from wasync.runtime.model import MessageStatus, MessageType, ReceiptKind, SyncSource, ThreadUpdate, thread_id
from wasync.runtime import outbox
from wasync.runtime.outbox import Claim, Decision, OutboxConflict, OutboxItem, OutboxStatus
from wasync.runtime.store.base import DryRunStore, Fence, PhoneInUse, StaleFence
from wasync.runtime.account import AccountPatch, AccountRecord, HistorySyncResult, HistorySyncUpdate, Repair
from wasync.runtime.model import AccountStatus
from wasync.runtime.store.schema import BadCursor, to_api

NOW = T0 + 60_000
CHAT = "15552223333@s.whatsapp.net"
TID = thread_id("acct1", CHAT)


@pytest.fixture(params=["sqlite", "firestore"])
def store(request, tmp_path):
    if request.param == "sqlite":
        from wasync.runtime.store.sqlite import SqliteStore

        s = SqliteStore(tmp_path / "store.db")
    else:
        from wasync.runtime.store.firestore import FirestoreStore

        s = FirestoreStore(project=request.getfixturevalue("firestore_project"))
    yield s
    s.close()


def stored(store, id, chat=CHAT, account="acct1"):
    return store.get_message(account, chat, id)


# --- messages ---------------------------------------------------------------------


def test_reingest_never_duplicates(store):
    m = msg(id="A1", body="hello")
    store.upsert_messages([m, m], NOW)
    store.upsert_messages([m.with_(sync_source=SyncSource.HISTORY_SYNC)], NOW + 1)
    page = store.list_messages("acct1", TID)
    assert [d["id"] for d in page.items] == ["A1"]
    doc = page.items[0]
    assert doc["body"] == "hello" and doc["waMessageId"] == "A1" and doc["direction"] == "inbound"
    assert doc["syncSource"] == "realtime"  # the first source is kept
    assert doc["tsClientMs"] == T0 and doc["tsClient"] == "2025-11-23T12:13:20.000Z"


def test_later_copy_never_erases_fields_or_regresses_status(store):
    store.upsert_messages([out("B1", status=MessageStatus.SENT)], NOW)
    store.apply_receipts([receipt(["B1"], ReceiptKind.DELIVERED, ts=T0 + 1000)], NOW)
    store.apply_receipts([receipt(["B1"], ReceiptKind.READ, ts=T0 + 2000)], NOW)
    # a history copy that knows less: older status, no media fields, no push name
    store.upsert_messages([out("B1", status=MessageStatus.DELIVERED, source=SyncSource.HISTORY_SYNC,
                               push_name=None)], NOW + 5)
    doc = stored(store, "B1")
    assert doc["status"] == "read"
    assert doc["deliveredAt"] == "2025-11-23T12:13:21.000Z"
    assert doc["readAt"] == "2025-11-23T12:13:22.000Z"


def test_receipts_in_any_order_end_at_the_furthest_status(store):
    store.upsert_messages([out("C1")], NOW)
    for kind in (ReceiptKind.PLAYED, ReceiptKind.DELIVERED, ReceiptKind.READ):
        store.apply_receipts([receipt(["C1"], kind)], NOW)
    assert stored(store, "C1")["status"] == "played"


def test_receipts_that_move_nothing_are_ignored(store):
    store.upsert_messages([out("C2")], NOW)
    for kind in (ReceiptKind.RETRY, ReceiptKind.SENDER, ReceiptKind.SERVER_ERROR, ReceiptKind.INACTIVE,
                 ReceiptKind.PEER, ReceiptKind.HISTORY_SYNC, ReceiptKind.OTHER):
        store.apply_receipts([receipt(["C2"], kind)], NOW)
    assert stored(store, "C2")["status"] == "sent"


def test_receipt_before_message_is_kept_without_a_ghost(store):
    result = store.apply_receipts([receipt(["D1"], ReceiptKind.READ, ts=T0 + 3000)], NOW)
    assert result.pending == 1 and result.applied == 0
    assert stored(store, "D1") is None
    assert store.list_messages("acct1", TID).items == []
    store.upsert_messages([out("D1", status=MessageStatus.SENT)], NOW)
    doc = stored(store, "D1")
    assert doc["status"] == "read" and doc["readAt"] == "2025-11-23T12:13:23.000Z"
    # applied once: a replay of the message does not bring the patch back
    store.upsert_messages([out("D1", status=MessageStatus.SENT)], NOW)
    assert stored(store, "D1")["status"] == "read"


def test_edit_replaces_text_and_survives_older_copies(store):
    store.upsert_messages([msg(id="E1", body="original")], NOW)
    store.apply_edits([edit("E1", "fixed")], NOW)
    store.upsert_messages([msg(id="E1", body="original", source=SyncSource.HISTORY_SYNC)], NOW)
    doc = stored(store, "E1")
    assert doc["body"] == "fixed" and "editedAt" in doc


def test_edit_before_message(store):
    assert store.apply_edits([edit("E2", "fixed")], NOW).pending == 1
    assert stored(store, "E2") is None
    store.upsert_messages([msg(id="E2", body="original")], NOW)
    assert stored(store, "E2")["body"] == "fixed"


def test_revoke_sticks(store):
    store.upsert_messages([msg(id="R1", body="oops")], NOW)
    store.apply_revokes([revoke("R1")], NOW)
    store.upsert_messages([msg(id="R1", body="oops")], NOW)
    doc = stored(store, "R1")
    assert doc["revoked"] is True and doc["revokedAt"]


def test_media_and_group_fields(store):
    group = "120363000000000001@g.us"
    m = msg(id="G1", chat=group, body=None, message_type=MessageType.IMAGE, media_type="image",
            media_mimetype="image/jpeg", caption="menu", sender_jid="15550009999@s.whatsapp.net",
            push_name="Bob", quoted_message_id="Q1")
    store.upsert_messages([m], NOW)
    doc = store.get_message("acct1", group, "G1")
    assert doc["messageType"] == "image" and doc["mediaMimetype"] == "image/jpeg" and doc["caption"] == "menu"
    assert doc["senderJid"] == "15550009999@s.whatsapp.net" and doc["pushName"] == "Bob"
    assert doc["isGroup"] is True
    store.flush()
    thread = store.get_thread(thread_id("acct1", group))
    assert thread["isGroup"] is True and thread["lastMessagePreview"] == "menu"


# --- threads ----------------------------------------------------------------------


def test_thread_describes_newest_message_whatever_the_order(store):
    newest = msg(id="N3", ts=T0 + 3000, body="x" * 150)
    store.upsert_messages([newest], NOW)
    store.upsert_messages([msg(id="N1", ts=T0 + 1000, body="old")], NOW)
    store.upsert_messages([msg(id="N2", ts=T0 + 2000, body="older")], NOW)
    store.update_threads([ThreadUpdate("acct1", CHAT, display_name="Alice")], NOW)
    store.flush()
    thread = store.get_thread(TID)
    assert thread["lastMessageAtMs"] == T0 + 3000
    assert thread["lastMessagePreview"] == "x" * 100
    assert thread["lastMessageAt"] == "2025-11-23T12:13:23.000Z"
    assert thread["displayName"] == "Alice" and thread["accountId"] == "acct1" and thread["clientJid"] == CHAT


def test_list_threads_pages_newest_first(store):
    chats = [f"1555000{i:04d}@s.whatsapp.net" for i in range(7)]
    store.upsert_messages([msg(chat=c, ts=T0 + (i % 4) * 1000) for i, c in enumerate(chats)], NOW)
    store.upsert_messages([msg(account="other", chat=chats[0], ts=T0 + 9999)], NOW)
    store.flush()
    seen, cursor = [], None
    while True:
        page = store.list_threads("acct1", limit=3, cursor=cursor)
        seen += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 7 and len({t["clientJid"] for t in seen}) == 7
    keys = [(t["lastMessageAtMs"], thread_id("acct1", t["clientJid"])) for t in seen]
    assert keys == sorted(keys, reverse=True)
    with pytest.raises(BadCursor):
        store.list_threads("acct1", cursor="not-a-cursor")


def test_list_messages_pages_newest_first(store):
    store.upsert_messages([msg(id=f"P{i:02d}", ts=T0 + (i // 2) * 1000) for i in range(11)], NOW)
    ids, cursor = [], None
    while True:
        page = store.list_messages("acct1", TID, limit=4, cursor=cursor)
        ids += [m["id"] for m in page.items]
        cursor = page.next_cursor
        if not cursor:
            break
    expected = sorted((f"P{i:02d}" for i in range(11)), key=lambda i: ((int(i[1:]) // 2), i), reverse=True)
    assert ids == expected
    assert store.list_messages("someone-else", TID).items == []


def test_paging_is_stable_while_messages_arrive(store):
    """Keyset paging: what arrives between two pages never makes a page repeat or skip an
    item that did not move. A thread that got a new message moves to the top (above the
    cursor): it is not returned twice; the next read of the first page has it."""
    chats = [f"1555100{i:04d}@s.whatsapp.net" for i in range(10)]
    store.upsert_messages([msg(chat=c, id=f"T{i:02d}", ts=T0 + i * 1000) for i, c in enumerate(chats)], NOW)
    store.upsert_messages([msg(id=f"M{i:02d}", ts=T0 + i * 1000) for i in range(10)], NOW)
    store.flush()
    seen, cursor, turn = [], None, 0
    while True:
        page = store.list_threads("acct1", limit=3, cursor=cursor)
        seen += [t["clientJid"] for t in page.items]
        turn += 1
        # Between pages: a seen thread and an unseen one get news, and a new thread starts.
        store.upsert_messages([msg(chat=seen[0], id=f"N{turn}a", ts=T0 + 100_000 + turn),
                               msg(chat=f"1555200{turn:04d}@s.whatsapp.net", id=f"N{turn}b", ts=T0 + 100_000 + turn)],
                              NOW)
        store.flush()
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen))  # nothing twice
    assert set(chats[:-1]) - {chats[-2]} <= set(seen)  # every thread that stayed where it was
    # Messages: newer ones and older ones (a backfill) arriving between pages.
    ids, cursor, turn = [], None, 0
    while True:
        page = store.list_messages("acct1", TID, limit=4, cursor=cursor)
        ids += [m["id"] for m in page.items]
        turn += 1
        store.upsert_messages([msg(id=f"NEW{turn}", ts=T0 + 200_000 + turn), msg(id=f"OLD{turn}", ts=T0 - 50_000 - turn)],
                              NOW)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(ids) == len(set(ids)) and {f"M{i:02d}" for i in range(10)} <= set(ids)
    ours = [i for i in ids if i.startswith(("M", "OLD"))]  # (the thread test above added some N...a too)
    assert ours[:10] == [f"M{i:02d}" for i in reversed(range(10))]  # in order, newest first
    assert ours[10:] and all(i.startswith("OLD") for i in ours[10:])  # older history arriving below the cursor
    assert not any(i.startswith("NEW") for i in ids)  # newer than the first page: for the next first page


def test_a_job_lock_never_brings_back_a_removed_account(store):
    assert store.acquire_job_lock("backfill", "gone", "i1", NOW, 60_000) is not None
    assert store.get_account("gone") is None
    store.create_account("acct1", None, NOW)
    store.acquire_job_lock("backfill", "acct1", "i1", NOW, 60_000)
    assert store.get_account("acct1")["autoBackfillLeaseHolder"] == "i1"


# --- accounts -----------------------------------------------------------------------


def history(seqs, saved=3, spool="spool-a", at=NOW):
    return HistorySyncUpdate(at, HistorySyncResult(saved, 0, 0, saved, False), tuple((spool, seq) for seq in seqs))


def test_accounts_create_update_list_and_delete(store):
    assert store.create_account("acct1", None, NOW) is True
    assert store.create_account("acct1", "15550001111", NOW) is False  # exists: untouched
    doc = store.get_account("acct1")
    assert doc["status"] == "pairing" and doc["enabled"] is True and "phone" not in doc and doc["createdAt"]
    store.update_account("acct1", AccountPatch(status=AccountStatus.CONNECTING, history=history([7])), NOW)
    store.update_account("acct1", AccountPatch(status=AccountStatus.CONNECTED, phone="15550001111", jid="1@s",
                                               history=history([8, 9])), NOW + 1000)
    doc = store.get_account("acct1")
    assert doc["status"] == "connected" and doc["historySyncCount"] == 3
    assert doc["lastHistorySyncResult"] == {"saved": 3, "skipped": 0, "errors": 0, "total": 3, "dryRun": False}
    assert doc["lastHistorySyncAt"] and doc["accountId"] == "acct1" and doc["updatedAt"]
    assert doc["phone"] == "15550001111" and doc["jid"] == "1@s"
    assert [a["accountId"] for a in store.list_accounts()] == ["acct1"]
    assert store.delete_account("acct1") is True
    assert store.get_account("acct1") is None and store.delete_account("acct1") is False


def test_an_account_per_phone(store):
    assert store.create_account("acct1", "15550001111", NOW) is True
    with pytest.raises(PhoneInUse) as refused:
        store.create_account("acct2", "15550001111", NOW)
    assert refused.value.holder == "acct1" and store.get_account("acct2") is None
    # A phone learnt at pairing counts too; an account without a phone never conflicts.
    assert store.create_account("acct3", None, NOW) is True
    store.update_account("acct3", AccountPatch(phone="15550003333"), NOW)
    with pytest.raises(PhoneInUse):
        store.create_account("acct4", "15550003333", NOW)
    assert store.create_account("acct5", None, NOW) is True
    assert store.delete_account("acct1")
    assert store.create_account("acct2", "15550001111", NOW) is True  # free again once removed


def test_accounts_added_at_once_are_all_created_promptly(store):
    """Eight API adds at once (an operator's script): each checks its phone in a transaction.
    On the emulator, eight such transactions at once took 11 s (the API answered 504)."""
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda n: store.create_account(f"acct{n}", f"155500{n:05d}", NOW), range(8)))
    assert created == [True] * 8 and len(store.list_accounts()) == 8
    assert time.monotonic() - started < 4.0


def test_a_big_history_write_with_a_few_known_messages_keeps_what_they_learnt(store):
    """Three chunks of new messages go out at once (Firestore: concurrent creates); the one
    chunk holding a message stored before takes the read-merge path, the others do not."""
    store.upsert_messages([out("K700", ts=T0 + 700, status=MessageStatus.READ)], NOW)
    history_copy = [out(f"K{n}", ts=T0 + n, status=MessageStatus.SENT, source=SyncSource.HISTORY_SYNC)
                    for n in range(1_300)]
    assert store.upsert_messages(history_copy, NOW).messages == 1_300
    assert store.get_message("acct1", history_copy[0].client_jid, "K700")["status"] == "read"  # not moved back
    for n in (0, 499, 500, 1_299):
        assert store.get_message("acct1", history_copy[0].client_jid, f"K{n}")["status"] == "sent"


def test_history_chunks_are_counted_once_however_often_they_are_replayed(store):
    store.create_account("acct1", None, NOW)
    store.update_account("acct1", AccountPatch(history=history([10, 11])), NOW)
    store.update_account("acct1", AccountPatch(history=history([10, 11, 12])), NOW)  # a replay, and one new
    store.update_account("acct1", AccountPatch(history=history([11])), NOW)  # a late duplicate
    store.update_account("acct1", AccountPatch(history=history([3], spool="spool-b")), NOW)  # another journal
    store.update_account("acct1", AccountPatch(history=history([], saved=9)), NOW)  # a result, no chunk
    doc = store.get_account("acct1")
    assert doc["historySyncCount"] == 4 and doc["lastHistorySyncResult"]["saved"] == 9


def test_an_update_never_brings_back_a_removed_account(store):
    assert store.update_account("gone", AccountPatch(realtime_ingest_ms=NOW), NOW) is False
    assert store.update_account("gone", AccountPatch(history=history([1])), NOW) is False
    assert store.get_account("gone") is None and store.list_accounts() == []


def test_repair_flag_set_and_cleared(store):
    store.create_account("acct1", "15550001111", NOW)
    store.update_account("acct1", AccountPatch(status=AccountStatus.NEEDS_REPAIR,
                                               repair=Repair(True, "logged out (LOGGED_OUT)", NOW)), NOW)
    doc = store.get_account("acct1")
    assert doc["needsRepair"] is True and doc["repairReason"] == "logged out (LOGGED_OUT)"
    assert doc["repairRequestedAt"] and doc["status"] == "needs_repair"
    assert store.list_account_records() == [AccountRecord(
        "acct1", enabled=True, phone="15550001111", status=AccountStatus.NEEDS_REPAIR,
        repair=Repair(True, "logged out (LOGGED_OUT)", NOW))]
    store.update_account("acct1", AccountPatch(repair=Repair(False)), NOW)
    doc = store.get_account("acct1")
    assert doc["needsRepair"] is False and doc["repairReason"] is None and doc["repairRequestedAt"] is None
    assert store.list_account_records()[0].repair == Repair(False)


def test_fenced_account_write_rejects_stale_epoch(store):
    store.create_account("acct1", None, NOW)
    first = store.acquire_lease("acct1", "i1", None, NOW, 1000)
    store.update_account("acct1", AccountPatch(status=AccountStatus.CONNECTED), NOW, fence=Fence("i1", first.epoch))
    second = store.acquire_lease("acct1", "i2", store.get_lease("acct1"), NOW + 2000, 1000)
    with pytest.raises(StaleFence):
        store.update_account("acct1", AccountPatch(status=AccountStatus.DISCONNECTED), NOW,
                             fence=Fence("i1", first.epoch))
    store.update_account("acct1", AccountPatch(status=AccountStatus.CONNECTED), NOW, fence=Fence("i2", second.epoch))
    assert store.get_account("acct1")["status"] == "connected"


# --- leases -------------------------------------------------------------------------


def test_a_lease_is_taken_only_as_it_was_read(store):
    assert store.get_lease("acct1") is None
    a = store.acquire_lease("acct1", "i1", None, NOW, 15_000)
    assert (a.holder, a.epoch, a.expires_at_ms, a.renewed_at_ms) == ("i1", 1, NOW + 15_000, NOW)
    assert store.acquire_lease("acct1", "i2", None, NOW, 15_000) is None  # it exists now
    [renewed] = store.renew_leases([a], NOW + 5000, 15_000)
    assert (renewed.epoch, renewed.expires_at_ms, renewed.renewed_at_ms) == (1, NOW + 20_000, NOW + 5000)
    assert store.acquire_lease("acct1", "i2", a, NOW + 5001, 15_000) is None  # read before the renewal
    seen = store.get_lease("acct1")
    assert seen.same_record(renewed)
    taken = store.acquire_lease("acct1", "i2", seen, NOW + 30_000, 15_000)  # the caller judged it stale
    assert (taken.holder, taken.epoch) == ("i2", 2)
    assert store.renew_leases([renewed], NOW + 30_001, 15_000) == []  # i1 lost it
    assert store.release_lease("acct1", "i1", 1) is False
    assert store.release_lease("acct1", "i2", 2) is True
    released = store.get_lease("acct1")
    assert released.released and released.epoch == 2
    assert store.renew_leases([taken], NOW + 30_002, 15_000) == []  # released is not renewable
    back = store.acquire_lease("acct1", "i1", released, NOW + 30_002, 15_000)  # at once, no expiry wait
    assert (back.holder, back.epoch) == ("i1", 3)
    assert store.get_lease("acct1") == back
    assert [lease.account_id for lease in store.list_leases()] == ["acct1"]


def test_a_lease_write_resent_after_it_landed_is_not_taken_for_a_loss(store):
    # A store call whose answer is lost is resent; the resend finds its own write.
    first = store.acquire_lease("acct1", "i1", None, NOW, 15_000)
    again = store.acquire_lease("acct1", "i1", None, NOW, 15_000)
    assert again is not None and (again.holder, again.epoch, again.renewed_at_ms) == ("i1", 1, NOW)
    assert store.acquire_lease("acct1", "i1", None, NOW + 1, 15_000) is None  # a later call is a new one
    [renewed] = store.renew_leases([first], NOW + 5000, 15_000)
    taken = store.acquire_lease("acct1", "i2", store.get_lease("acct1"), NOW + 30_000, 15_000)
    assert taken.epoch == 2
    # i2's renewal landed but its answer was lost: it renews from the record it acquired.
    store.renew_leases([taken], NOW + 31_000, 15_000)
    [still] = store.renew_leases([taken], NOW + 32_000, 15_000)
    assert (still.holder, still.epoch, still.renewed_at_ms) == ("i2", 2, NOW + 32_000)
    assert store.renew_leases([renewed], NOW + 32_000, 15_000) == []  # i1's epoch is gone for good
    assert store.get_lease("acct1").renewed_at_ms == NOW + 32_000


def test_many_leases_renewed_at_once_leave_out_the_lost_ones(store):
    leases = [store.acquire_lease(f"a{n:02d}", "i1", None, NOW, 15_000) for n in range(30)]
    assert store.acquire_lease("a07", "i2", store.get_lease("a07"), NOW + 1, 15_000).holder == "i2"
    assert store.release_lease("a09", "i1", 1)
    renewed = store.renew_leases(leases, NOW + 5000, 15_000)
    assert sorted(lease.account_id for lease in renewed) == [f"a{n:02d}" for n in range(30) if n not in (7, 9)]
    again = store.renew_leases(renewed, NOW + 10_000, 15_000)  # from what the last renewal returned
    assert len(again) == 28 and all(lease.renewed_at_ms == NOW + 10_000 for lease in again)
    assert store.get_lease("a07").holder == "i2" and store.get_lease("a09").released


def test_instances(store):
    store.heartbeat_instance("i1", "boot1", NOW, T0, "0.1.0", 3)
    store.heartbeat_instance("i1", "boot1", NOW + 5000, T0, "0.1.0", 4)
    [doc] = store.list_instances()
    assert doc["heartbeatAtMs"] == NOW + 5000 and doc["accounts"] == 4 and doc["version"] == "0.1.0"
    store.remove_instance("i1")
    assert store.list_instances() == []


# --- job locks ------------------------------------------------------------------------


@pytest.mark.parametrize("job, mirror", [("backfill", "autoBackfillLeaseHolder"),
                                         ("recent_sync", "recentSyncLeaseHolder")])
def test_job_lock_is_exclusive_and_mirrored(store, job, mirror):
    store.create_account("acct1", None, NOW)
    lock = store.acquire_job_lock(job, "acct1", "i1", NOW, 60_000)
    assert lock.owner == "i1" and lock.expires_at_ms == NOW + 60_000
    assert store.get_account("acct1")[mirror] == "i1"
    assert store.acquire_job_lock(job, "acct1", "i2", NOW + 1000, 60_000) is None
    held = store.get_job_lock(job, "acct1")
    assert (held.owner, held.expires_at_ms, held.started_at_ms) == ("i1", NOW + 60_000, NOW)
    assert store.release_job_lock(job, "acct1", "i2") is False
    taken = store.acquire_job_lock(job, "acct1", "i2", NOW + 60_000, 60_000)  # expired
    assert taken.owner == "i2"
    assert store.release_job_lock(job, "acct1", "i2") is True
    assert store.get_account("acct1")[mirror] is None
    assert store.get_job_lock(job, "acct1") is None
    assert store.acquire_job_lock(job, "acct1", "i1", NOW + 60_001, 60_000).owner == "i1"


def test_job_lock_with_stale_fence(store):
    lease = store.acquire_lease("acct1", "i1", None, NOW, 1000)
    store.acquire_lease("acct1", "i2", store.get_lease("acct1"), NOW + 1000, 1000)
    with pytest.raises(StaleFence):
        store.acquire_job_lock("backfill", "acct1", "i1", NOW + 1000, 60_000, fence=Fence("i1", lease.epoch))


# --- outbox ---------------------------------------------------------------------------


def item(n: int, **kw) -> OutboxItem:
    return OutboxItem(id=f"3EB0OUT{n:02d}", account_id="acct1", to_jid=CHAT, text=f"t{n}", created_at_ms=NOW + n, **kw)


def owned(store, holder="i1", claim_id="c1", at=NOW) -> Claim:
    lease = store.acquire_lease("acct1", holder, store.get_lease("acct1"), at, 15_000)
    return Claim(holder, lease.epoch, claim_id)


def test_outbox_enqueue_stores_the_queued_message_once(store):
    stored, created = store.enqueue_outbox(item(0), NOW)
    assert created and stored == item(0)
    again, created = store.enqueue_outbox(replace(item(0), text="x"), NOW)
    assert not created and again.text == "t0"  # the stored item, untouched
    doc = store.get_message("acct1", CHAT, "3EB0OUT00")
    assert (doc["status"], doc["syncSource"], doc["direction"], doc["body"], doc["outboxStatus"]) == (
        "queued", "outbox", "outbound", "t0", "queued")
    assert store.list_threads("acct1").items[0]["lastMessageId"] == "3EB0OUT00"
    assert doc["outboxId"] == "3EB0OUT00"


def test_outbox_claim_takes_due_items_in_order_under_the_lease(store):
    claim = owned(store)
    for n in range(3):
        store.enqueue_outbox(item(n), NOW)
    taken = store.claim_outbox("acct1", claim, NOW, 2, resend_safe=False)
    assert [i.id for i in taken] == ["3EB0OUT00", "3EB0OUT01"]
    assert all((i.status, i.attempts, i.claim_id, i.claim_epoch) == (OutboxStatus.SENDING, 1, "c1", claim.epoch)
               for i in taken)
    assert [i.id for i in store.claim_outbox("acct1", claim, NOW, 5, resend_safe=False)] == ["3EB0OUT02"]
    assert store.claim_outbox("acct1", claim, NOW, 5, resend_safe=False) == []  # nothing twice to one claim
    # Retried later: not due before its time.
    store.settle_outbox("3EB0OUT02", claim, outbox.retry(store.get_outbox("3EB0OUT02"), "not connected", NOW), NOW)
    assert store.get_outbox("3EB0OUT02").status is OutboxStatus.QUEUED
    assert store.claim_outbox("acct1", claim, NOW + 1000, 5, resend_safe=False) == []
    assert [i.id for i in store.claim_outbox("acct1", claim, NOW + 2000, 5, resend_safe=False)] == ["3EB0OUT02"]
    # Another instance took the lease: this claim is stale everywhere.
    owned(store, "i2", "c2", at=NOW + 20_000)
    with pytest.raises(StaleFence):
        store.claim_outbox("acct1", claim, NOW, 5, resend_safe=False)
    with pytest.raises(StaleFence):
        store.settle_outbox("3EB0OUT00", Claim("i1", claim.epoch, "c9"), outbox.give_up(
            store.get_outbox("3EB0OUT00"), OutboxStatus.FAILED, "x", NOW), NOW)


def test_outbox_orphans_are_resent_only_where_that_is_safe(store):
    first = owned(store)
    store.enqueue_outbox(item(0), NOW)
    store.enqueue_outbox(item(1), NOW)
    store.claim_outbox("acct1", first, NOW, 5, resend_safe=False)  # ... and the claimer dies
    after = owned(store, "i2", "c2", at=NOW + 20_000)
    taken = store.claim_outbox("acct1", after, NOW + 20_000, 1, resend_safe=True)
    assert [(i.id, i.status, i.attempts, i.claim_id) for i in taken] == [("3EB0OUT00", OutboxStatus.SENDING, 2, "c2")]
    unsafe = store.claim_outbox("acct1", after, NOW + 20_000, 5, resend_safe=False)
    assert [(i.id, i.status) for i in unsafe] == [("3EB0OUT01", OutboxStatus.UNKNOWN)]
    assert "may have been sent" in unsafe[0].error
    doc = store.get_message("acct1", CHAT, "3EB0OUT01")
    assert (doc["status"], doc["outboxStatus"]) == ("queued", "unknown") and "may have been sent" in doc["sendError"]
    assert store.count_outbox() == {"acct1": {"sending": 1, "unknown": 1}}
    assert [i.id for i in store.list_outbox("acct1", [OutboxStatus.UNKNOWN], 10)] == ["3EB0OUT01"]
    # An operator decides: resend (queued again) or abandon (failed).
    assert store.decide_outbox("3EB0OUT01", Decision.RESEND, NOW).status is OutboxStatus.QUEUED
    with pytest.raises(OutboxConflict):
        store.decide_outbox("3EB0OUT01", Decision.ABANDON, NOW)


def test_outbox_sent_under_our_id_keeps_one_document(store):
    claim = owned(store)
    store.enqueue_outbox(item(0), NOW)
    store.claim_outbox("acct1", claim, NOW, 5, resend_safe=True)
    store.apply_receipts([receipt(ids=["3EB0OUT00"], kind=ReceiptKind.DELIVERED, ts=NOW + 500)], NOW)
    done = store.record_outbox_sent("3EB0OUT00", "3EB0OUT00", NOW + 100, NOW + 200)
    assert (done.status, done.wa_message_id) == (OutboxStatus.SENT, "3EB0OUT00")
    assert store.record_outbox_sent("3EB0OUT00", "3EB0OUT00", NOW + 100, NOW + 300) == done  # idempotent
    page = store.list_messages("acct1", TID)
    assert [(m["id"], m["status"], m["outboxStatus"]) for m in page.items] == [("3EB0OUT00", "delivered", "sent")]


def test_outbox_sent_under_whatsapps_id_replaces_the_queued_document(store):
    claim = owned(store)
    store.upsert_messages([msg(id="OLD", ts=T0)], NOW)
    store.enqueue_outbox(item(0), NOW)
    store.claim_outbox("acct1", claim, NOW, 5, resend_safe=False)
    # A receipt for WhatsApp's id may come before we record it.
    store.apply_receipts([receipt(ids=["3EB0WA"], kind=ReceiptKind.READ, ts=NOW + 900)], NOW)
    store.record_outbox_sent("3EB0OUT00", "3EB0WA", NOW - 400, NOW + 1000)  # WhatsApp's clock: a bit behind
    store.flush()
    ids = [(m["id"], m.get("status"), m.get("outboxId")) for m in store.list_messages("acct1", TID).items]
    assert ids == [("3EB0WA", "read", "3EB0OUT00"), ("OLD", None, None)]
    thread = store.list_threads("acct1").items[0]
    assert (thread["lastMessageId"], thread["lastMessagePreview"]) == ("3EB0WA", "t0")
    assert store.get_outbox("3EB0OUT00").message_id == "3EB0WA"


def test_outbox_failures_say_why_on_the_message(store):
    claim = owned(store)
    store.enqueue_outbox(item(0), NOW)
    (taken,) = store.claim_outbox("acct1", claim, NOW, 5, resend_safe=False)
    store.settle_outbox(taken.id, claim, outbox.give_up(taken, OutboxStatus.FAILED, "not on WhatsApp", NOW), NOW)
    doc = store.get_message("acct1", CHAT, taken.id)
    assert (doc["status"], doc["outboxStatus"], doc["sendError"]) == ("failed", "failed", "not on WhatsApp")
    assert store.count_outbox() == {}
    with pytest.raises(StaleFence):  # settled: the claim holds it no more
        store.settle_outbox(taken.id, claim, taken, NOW)


# --- dry run --------------------------------------------------------------------------


def test_dry_run_counts_and_writes_nothing(store):
    dry = DryRunStore(store)
    result = dry.upsert_messages([msg(id="X1"), msg(id="X2")], NOW)
    dry.apply_receipts([receipt(["X1"])], NOW)
    assert result.messages == 2 and dry.counts.messages == 2 and dry.counts.receipts == 1
    assert store.list_messages("acct1", TID).items == []
    assert dry.ping() is True  # everything else passes through


def test_ping(store):
    assert store.ping() is True


def test_the_sqlite_ping_fails_while_another_process_holds_the_write_lock(tmp_path):
    """A read is no test in WAL mode: it answered while every write waited (the store
    monitor said "up" through a whole outage and never saw it end)."""
    import sqlite3

    from wasync.runtime.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "ping.db", ping_timeout_s=0.2)
    blocker = sqlite3.connect(tmp_path / "ping.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        assert store.ping() is False
        blocker.execute("ROLLBACK")
        assert store.ping() is True
        (tmp_path / "ping.db").rename(tmp_path / "moved.db")
        assert store.ping() is False  # not answered by a new empty file
        assert not (tmp_path / "ping.db").exists()
    finally:
        blocker.close()
        store.close()


def test_releasing_a_lock_does_not_bring_back_a_deleted_account(store):
    store.create_account("gone", None, NOW)
    store.acquire_job_lock("backfill", "gone", "i1", NOW, 60_000)
    assert store.get_account("gone")["autoBackfillLeaseHolder"] == "i1"
    store.delete_account("gone")
    assert store.release_job_lock("backfill", "gone", "i1") is True
    assert store.get_account("gone") is None


def test_nested_results_come_back_json_safe():
    from datetime import datetime, timezone

    at = datetime(2025, 11, 23, 12, 0, tzinfo=timezone.utc)
    doc = to_api({"lastBackfillResult": {"threads": 1, "threadResults": [{"threadId": TID, "messages": 3, "at": at}]}})
    assert doc["lastBackfillResult"]["threadResults"] == [{"threadId": TID, "messages": 3,
                                                          "at": "2025-11-23T12:00:00.000Z"}]


def test_cursor_with_a_non_integer_sort_value_is_refused(store):
    from wasync.runtime.store.schema import encode_cursor

    with pytest.raises(BadCursor):
        store.list_messages("acct1", TID, cursor=encode_cursor("yesterday", "X"))
