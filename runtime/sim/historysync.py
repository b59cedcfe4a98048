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

End of history, as WhatsApp says it per conversation (`endOfHistoryTransfer` and
`endOfHistoryTransferType`): the part of a chat that carries the oldest message it
sends ends the chat's transfer. In the initial sync that is NO_MORE_ON_PRIMARY when the
sync holds the chat's whole time-0 history, else MORE_ON_PRIMARY; an ON_DEMAND answer
ends with NO_MORE_ON_PRIMARY only when it reads back to the chat's first message (see
`on_demand_end`), else ON_DEMAND_MORE_ON_PRIMARY.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

from wasync.runtime.sim import wire
from wasync.runtime.sim.world import Chat, WorldMessage

MAX_CHUNK_MESSAGES = 500
BOOTSTRAP_PER_CHAT = 1
ON_DEMAND_MAX = 50

# HistorySync Conversation.EndOfHistoryTransferType names (protobufs.py sets the enum).
MORE_ON_PRIMARY = "COMPLETE_BUT_MORE_MESSAGES_REMAIN_ON_PRIMARY"
NO_MORE_ON_PRIMARY = "COMPLETE_AND_NO_MORE_MESSAGE_REMAIN_ON_PRIMARY"
ON_DEMAND_MORE_ON_PRIMARY = "COMPLETE_ON_DEMAND_SYNC_BUT_MORE_MSG_REMAIN_ON_PRIMARY"


class Conversation(NamedTuple):
    """One chat's part of a history chunk: messages oldest first and, on the part that
    ends the chat's transfer, how it ends (an end type above; None on other parts)."""

    chat: Chat
    messages: Sequence[WorldMessage]
    end: Optional[str] = None


@dataclass(frozen=True)
class Chunk:
    sync_type: str
    chunk_order: int
    progress: int
    conversations: tuple[Conversation, ...]

    @property
    def size(self) -> int:
        return sum(len(c.messages) for c in self.conversations)


def initial_sync(chats: Sequence[tuple[Chat, Sequence[WorldMessage]]], per_chat: int) -> list[Chunk]:
    """The chunks for `chats` given as (chat, time-0 history oldest first). Only the newest
    `per_chat` + 1 messages of a history matter: the one more says whether the sync holds
    all of it."""
    newest = []
    for chat, msgs in chats:
        included = tuple(msgs[-per_chat:]) if per_chat > 0 else ()
        whole = len(msgs) <= len(included)
        newest.append(Conversation(chat, included, NO_MORE_ON_PRIMARY if whole else MORE_ON_PRIMARY))
    newest.sort(key=lambda c: (c.messages[-1].ts or 0) if c.messages else 0, reverse=True)  # recent chats first
    bootstrap = [Conversation(chat, msgs[-BOOTSTRAP_PER_CHAT:], end if len(msgs) <= BOOTSTRAP_PER_CHAT else None)
                 for chat, msgs, end in newest]
    recent = [Conversation(chat, msgs[:-BOOTSTRAP_PER_CHAT], end)
              for chat, msgs, end in newest if len(msgs) > BOOTSTRAP_PER_CHAT]
    phases = [("INITIAL_BOOTSTRAP", _split(bootstrap)), ("RECENT", _split(recent))]
    total = sum(len(c.messages) for c in newest)
    chunks, done = [], 0
    for sync_type, parts in phases:
        for order, conversations in enumerate(parts, 1):
            done += sum(len(c.messages) for c in conversations)
            chunks.append(Chunk(sync_type, order, 100 * done // total if total else 100, conversations))
    return chunks


def on_demand_end(direction: str, reaches_first: bool) -> str:
    """How an ON_DEMAND answer ends its conversation. `reaches_first`: its oldest message
    (the anchor, when it is empty) is the chat's first, so nothing older remains."""
    return NO_MORE_ON_PRIMARY if direction == wire.HISTORY_BEFORE and reaches_first else ON_DEMAND_MORE_ON_PRIMARY


def _split(conversations: list[Conversation]) -> list[tuple[Conversation, ...]]:
    """Conversations packed into chunks of at most MAX_CHUNK_MESSAGES messages; a chat
    that does not fit continues, with its older messages, in the next chunk (which then
    carries its end)."""
    chunks: list[list[Conversation]] = [[]]
    room = MAX_CHUNK_MESSAGES
    for conv in conversations:
        msgs = conv.messages
        if not msgs:
            chunks[-1].append(conv)
            continue
        while msgs:
            if room == 0:
                chunks.append([])
                room = MAX_CHUNK_MESSAGES
            take = msgs[-room:]
            msgs, room = msgs[:-len(take)], room - len(take)
            chunks[-1].append(Conversation(conv.chat, take, None if msgs else conv.end))
    return [tuple(c) for c in chunks]
