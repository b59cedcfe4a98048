"""Telling an actor something later, without blocking it (pykka has no timers)."""
from __future__ import annotations

import threading

import pykka


def tell_later(ref: pykka.ActorRef, message, delay_s: float) -> threading.Timer:
    """A started daemon timer that tells `ref` `message` after `delay_s`, unless the actor
    has stopped by then. Cancel it to take the message back."""

    def fire() -> None:
        if ref.is_alive():
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass  # it stopped between the check and the tell

    timer = threading.Timer(delay_s, fire)
    timer.daemon = True
    timer.start()
    return timer
