"""Which messages the simulated phone puts in each history-sync chunk (pure).

The initial sync after a pairing carries the newest `initialSyncPerChat` messages of
every chat's time-0 history (the world file's messages; live, sent and dropped ones
never: those reach the client live or through on-demand requests only):
- `INITIAL_BOOTSTRAP` first: every chat, most recent first, with its newest message
  (enough for an inbox to list its threads; chats without history come with their name
  and no messages);
- then `RECENT`: the rest, newest first, a chat split across chunks when it does not fit.
Each phase has at least one chunk (an empty RECENT when there is nothing left), chunks
hold at most MAX_CHUNK_MESSAGES messages, `chunk_order` counts from 1 within a phase and
`progress` is the percentage of the sync's messages sent so far (100 on the last chunk).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from wasync.runtime.sim.world import Chat, WorldMessage

MAX_CHUNK_MESSAGES = 500
BOOTSTRAP_PER_CHAT = 1
ON_DEMAND_MAX = 50

Conversation = tuple[Chat, Sequence[WorldMessage]]


@dataclass(frozen=True)
class Chunk:
    sync_type: str
    chunk_order: int
    progress: int
    conversations: tuple[Conversation, ...]

    @property
    def size(self) -> int:
        return sum(len(msgs) for _, msgs in self.conversations)


def initial_sync(chats: Sequence[tuple[Chat, Sequence[WorldMessage]]], per_chat: int) -> list[Chunk]:
    """The chunks for `chats` given as (chat, time-0 history oldest first)."""
    newest = [(chat, tuple(msgs[-per_chat:]) if per_chat > 0 else ()) for chat, msgs in chats]
    newest.sort(key=lambda cm: (cm[1][-1].ts or 0) if cm[1] else 0, reverse=True)  # recent chats first
    bootstrap = [(chat, msgs[-BOOTSTRAP_PER_CHAT:]) for chat, msgs in newest]
    recent = [(chat, msgs[:-BOOTSTRAP_PER_CHAT]) for chat, msgs in newest if len(msgs) > BOOTSTRAP_PER_CHAT]
    phases = [("INITIAL_BOOTSTRAP", _split(bootstrap)), ("RECENT", _split(recent))]
    total = sum(len(msgs) for _, msgs in newest)
    chunks, done = [], 0
    for sync_type, parts in phases:
        for order, conversations in enumerate(parts, 1):
            done += sum(len(msgs) for _, msgs in conversations)
            chunks.append(Chunk(sync_type, order, 100 * done // total if total else 100, conversations))
    return chunks


def _split(conversations: list[Conversation]) -> list[tuple[Conversation, ...]]:
    """Conversations packed into chunks of at most MAX_CHUNK_MESSAGES messages; a chat
    that does not fit continues, with its older messages, in the next chunk."""
    chunks: list[list[Conversation]] = [[]]
    room = MAX_CHUNK_MESSAGES
    for chat, msgs in conversations:
        if not msgs:
            chunks[-1].append((chat, msgs))
            continue
        while msgs:
            if room == 0:
                chunks.append([])
                room = MAX_CHUNK_MESSAGES
            take = msgs[-room:]
            chunks[-1].append((chat, take))
            msgs, room = msgs[:-len(take)], room - len(take)
    return [tuple(c) for c in chunks]
