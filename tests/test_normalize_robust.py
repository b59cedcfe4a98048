"""The normalizer on bytes it should never see: text that is not UTF-8 (Go lets any bytes
into a proto2 string; Python hands such a field back as bytes), and random corruption.
Whatever arrives, `normalize` returns domain values made of str, or raises NormalizeError
(the one event is quarantined); it never raises anything else and never leaks bytes."""
from __future__ import annotations

import dataclasses
import random

import pytest

from wasync.runtime import model as m
from wasync.runtime.sim import protobufs as pb
from wasync.runtime.sim.worldmodel import Chat, WorldMessage
from wasync.runtime.transport.normalize import NormalizeError, normalize

PHONE = "15550001111"
ALICE = "15552223333@s.whatsapp.net"


def live(text="hello-unique-text"):
    return pb.wire(pb.message_event(PHONE, ALICE, WorldMessage(id="X1", from_me=False, ts=1763900100, type="text",
                                                               text=text)))


def history(texts):
    return pb.wire(pb.history_sync_event(PHONE, "RECENT", [(
        Chat(jid=ALICE, name="Alice", group=False, auto_receipts=True, messages=()),
        [WorldMessage(id=f"D{i}", from_me=False, ts=1763900000 + i, type="text", text=t) for i, t in enumerate(texts)])]))


def has_bytes(value) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, (tuple, list)):
        return any(has_bytes(v) for v in value)
    if dataclasses.is_dataclass(value):
        return any(has_bytes(v) for v in vars(value).values())
    return False


def test_a_message_body_that_is_not_utf8_is_kept_with_replacement_characters():
    kind, raw = live()
    (msg,) = normalize("a1", kind, raw.replace(b"hello-unique-text", b"\xff\xfe" + b"x" * 15))
    assert msg.body == "\ufffd\ufffd" + "x" * 15 and msg.id == "X1" and msg.client_jid == ALICE


def test_a_jid_that_is_not_utf8_is_decoded_not_rendered_as_bytes():
    kind, raw = live()
    (msg,) = normalize("a1", kind, raw.replace(b"15552223333", b"\xff\xfe552223333"))
    assert msg.client_jid == "\ufffd\ufffd552223333@s.whatsapp.net"


def test_one_bad_text_in_a_history_chunk_keeps_the_whole_chunk():
    kind, raw = history(["fine-0", "history-text-x", "fine-2"])
    (batch,) = normalize("a1", kind, raw.replace(b"history-text-x", b"\xffistory-text-x"))
    assert sorted(msg.body for msg in batch.messages) == ["fine-0", "fine-2", "\ufffdistory-text-x"]


def test_a_receipt_for_ids_that_are_not_utf8():
    kind, raw = pb.wire(pb.receipt_event(PHONE, ALICE, ["ID-ONE", "ID-TWO"], "read", 1763900100))
    (receipt,) = normalize("a1", kind, raw.replace(b"ID-ONE", b"ID-\xffNE"))
    assert receipt.message_ids == ("ID-\ufffdNE", "ID-TWO")


@pytest.mark.parametrize("seed", range(4))
def test_corrupted_events_give_str_values_or_normalize_error(seed):
    """Random byte flips in real events (a fuzz of 1,500 cases per seed)."""
    rng = random.Random(seed)
    seeds = [live("hi"), history(["x", "y"]),
             pb.wire(pb.receipt_event(PHONE, ALICE, ["X1"], "read", 1763900100)),
             pb.wire(pb.pair_status_event(True, "15550001111:3@s.whatsapp.net")), pb.wire(pb.qr_event(["2@abc,def"]))]
    outcomes = {"events": 0, "refused": 0}
    for _ in range(1500):
        kind, raw = rng.choice(seeds)
        corrupted = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
        try:
            events = normalize("a1", kind, bytes(corrupted))
        except NormalizeError:
            outcomes["refused"] += 1
            continue
        assert not has_bytes(events), events
        assert all(isinstance(e, m.NormalizedEvent.__args__) for e in events)
        outcomes["events"] += 1
    assert outcomes["events"] > 100 and outcomes["refused"] > 10, outcomes
