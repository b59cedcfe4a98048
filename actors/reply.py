"""Replies that come later: a typed ask whose answer is not ready inside the handler,
and tells from threads that are not actors (executor callbacks, reapers).

pykka's `ask` answers with the handler's return value. Some answers are only known later
(a pairing code from a call running off the actor's thread, "every session stopped"
once each child has reported): such a message carries a `Reply` that whoever knows the
answer fills in, on whatever thread it is. The asker waits on it with a timeout (from a
coroutine: through runtime/bridge.py), never an actor.
"""
from __future__ import annotations

from typing import Any

import pykka

Reply = pykka.Future  # a one-shot answer slot: set() or fail(), once


def new_reply() -> Reply:
    return pykka.ThreadingFuture()


def fail(reply: Reply, exc: BaseException) -> None:
    reply.set_exception((type(exc), exc, exc.__traceback__))


def answer(reply: Reply, value: Any = None) -> None:
    reply.set(value)


def tell_if_alive(ref: pykka.ActorRef, message: Any) -> bool:
    """Tell `ref`, from any thread; False if it is gone (stopping: whoever waits for what
    it would have done has a deadline of its own)."""
    try:
        ref.tell(message)
        return True
    except pykka.ActorDeadError:
        return False
