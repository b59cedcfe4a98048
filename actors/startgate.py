"""One start-up storm limit shared by everything that opens a WhatsApp connection.

The supervisor's starts and restarts and a transport's own reconnects (after a dropped
socket or a disconnect window) all take their slot here, so 500 accounts that lost
their sockets together come back at `WASYNC_MAX_STARTS_PER_SECOND`, not all at once.
The spacing rule lives in actors/policy/pacing.py; this is only its thread-safe holder.
"""
from __future__ import annotations

import random
import threading
from typing import Optional

from wasync.actors.policy.pacing import StartPacer
from wasync.runtime.clock import Clock


class StartGate:
    def __init__(self, rate: float, clock: Clock, rand: Optional[random.Random] = None):
        self._clock = clock
        self._rand = rand or random.Random()
        self._pacer = StartPacer(rate=rate)
        self._lock = threading.Lock()
        self.reserved = 0

    def reserve_delay_s(self) -> float:
        """Take the next free slot; returns how many seconds to wait before connecting.
        Reserve only when the connection is due (not minutes ahead for a backoff): a slot
        far in the future would make every start after it wait too."""
        with self._lock:
            now = int(self._clock.monotonic_s() * 1000)  # monotonic: a wall-clock step must not stall starts
            slot, self._pacer = self._pacer.next_slot(now, self._rand)
            self.reserved += 1
        return max(0.0, (slot - now) / 1000)
