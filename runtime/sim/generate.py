"""Deterministic synthetic chats for a world's `generate` block.

Depends only on (seed, phone): `random.Random` seeded from a sha256 of both (never
`hash()`, which is salted per process), times counting back from a reference instant
derived from the seed, never from the wall clock.
"""
from __future__ import annotations

import hashlib
import itertools
import random
from typing import Any, Optional

from wasync.runtime.sim.worldmodel import (
    DEFAULT_MIMETYPES, HISTORY_SPAN_S, MESSAGE_TYPES, Chat, Generate, WorldMessage,
    _REFERENCE_BASE_S, _REFERENCE_RANGE_S,
)



def stable_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed from `seed` and `parts`, the same in every process (sha256)."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def reference_time(seed: int) -> int:
    """When generated history ends (Unix seconds): derived from the seed, within 2025."""
    return _REFERENCE_BASE_S + stable_seed(seed, "reference") % _REFERENCE_RANGE_S


def new_message_id(rng: random.Random) -> str:
    """A WhatsApp-style message id: "3EB0" and 16 uppercase hex digits."""
    return f"3EB0{rng.getrandbits(64):016X}"


_FIRST = "Ana Ben Carla David Elif Farid Grace Hugo Ines Jon Kemi Luis Maya Nils Omar Priya Rui Sara Vera".split()
_LAST = "Alves Brown Costa Diaz Evans Fischer Garcia Haddad Ito Jensen Khan Lopez Moreau Novak Okafor Park".split()
_GROUP_NAMES = ("Team", "Family", "Suppliers", "Weekend plans", "Orders", "Book club", "Shift B", "Drivers")
_WORDS = ("hi ok thanks order delivery today tomorrow price invoice menu table please confirm address call me "
          "when ready great see you at the shop two three boxes paid sent photo new stock open closed sorry "
          "late on my way perfect").split()
_PLACES = ("Central Station", "Harbour Cafe", "Main Square", "Warehouse 4", "City Hospital", "Airport T2")
_EMOJI = ("👍", "❤️", "😂", "😮", "😢", "🙏")
# Cumulative weights in MESSAGE_TYPES order: mostly text, as in real inboxes.
_TYPE_CUM_WEIGHTS = tuple(itertools.accumulate((70, 8, 3, 6, 3, 4, 2, 2, 2)))


def generate_chats(seed: int, phone: str, spec: Generate, taken: frozenset[str] | set[str] = frozenset()
                   ) -> tuple[Chat, ...]:
    """`spec.chats` synthetic chats (about 30% groups) of `spec.messages_per_chat`
    messages each, from (seed, phone) alone; their JIDs avoid those in `taken`."""
    rng = random.Random(stable_seed(seed, phone))
    reference, taken, chats = reference_time(seed), set(taken), []
    for _ in range(spec.chats):
        group = rng.random() < 0.3
        while (jid := f"120363{rng.randrange(10**11, 10**12)}@g.us" if group else _person_jid(rng)) in taken:
            pass
        taken.add(jid)
        size = rng.randint(2, 8) if group else 1
        people = {jid: _person_name(rng)} if not group else {_person_jid(rng): _person_name(rng) for _ in range(size)}
        name = rng.choice(_GROUP_NAMES) if group else people[jid]
        chats.append(Chat(jid, name, group, True, _messages(rng, reference, spec.messages_per_chat, people, group)))
    return tuple(chats)


def _person_jid(rng: random.Random) -> str:
    return f"1555{rng.randrange(10**7):07d}@s.whatsapp.net"


def _person_name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _messages(rng: random.Random, reference: int, count: int, people: dict[str, str], group: bool
              ) -> tuple[WorldMessage, ...]:
    start = reference - HISTORY_SPAN_S
    times = sorted(rng.randrange(start, reference) for _ in range(count))
    out: list[WorldMessage] = []
    ids: set[str] = set()
    senders = list(people)
    for ts in times:
        ts = max(ts, out[-1].ts + 1) if out else ts  # strictly increasing: "the newest N" is never a tie
        while (mid := new_message_id(rng)) in ids:
            pass
        ids.add(mid)
        out.append(_message_at(rng, mid, ts, people, senders if group else None, out))
    return tuple(out)


def _message_at(rng: random.Random, mid: str, ts: int, people: dict[str, str], senders: Optional[list[str]],
                earlier: list[WorldMessage]) -> WorldMessage:
    from_me = rng.random() < 0.4
    mtype = rng.choices(MESSAGE_TYPES, cum_weights=_TYPE_CUM_WEIGHTS)[0]
    mtype = "text" if mtype == "reaction" and not earlier else mtype
    sender = rng.choice(senders) if senders and not from_me else None
    fields: dict[str, Any] = dict(mimetype=DEFAULT_MIMETYPES.get(mtype))
    if mtype == "text":
        fields["text"] = _sentence(rng)
    elif mtype in ("image", "video") and rng.random() < 0.5:
        fields["caption"] = _sentence(rng)
    elif mtype == "document":
        fields["filename"] = f"{rng.choice(_WORDS)}-{rng.randrange(1, 100)}.pdf"
    elif mtype == "location":
        fields.update(text=rng.choice(_PLACES), latitude=round(rng.uniform(-60, 70), 5),
                      longitude=round(rng.uniform(-180, 180), 5))
    elif mtype == "contact":
        fields["text"] = _person_name(rng)
    elif mtype == "reaction":
        target = rng.choice(earlier[-20:])
        fields.update(text=rng.choice(_EMOJI), target=target.id, target_from_me=target.from_me)
    if from_me:
        status = rng.choices(("read", "delivered", "sent"), cum_weights=(80, 95, 100))[0]
        played = status == "read" and mtype in ("audio", "video") and rng.random() < 0.5
        fields["status"] = "played" if played else status
    else:  # inbound: the sender's push name (the contact's, in a 1:1 chat)
        fields["push_name"] = people[sender] if sender else next(iter(people.values()))
    return WorldMessage(id=mid, from_me=from_me, ts=ts, type=mtype, sender=sender, **fields)


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12))).capitalize()
