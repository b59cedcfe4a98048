"""HistoryWalk: one backfill or recent-sync run through an account's threads, the state
the AccountActor keeps while it asks WhatsApp for history (its BackfillState in motion).

No I/O and no threads: the account actor asks `next_request()`, sends it off its own
thread, and hands back what came in (`answered`, from the spool like any other event)
or what went wrong (`failed`). One request is in flight at a time, so an answer is
matched to its request by chat and by lying on the asked side of the anchor; answers
that match nothing (a replay, a late answer to an abandoned request) are stored all the
same and ignored here. Where the walk stands between runs is not kept: the next run
starts from the store's oldest and newest messages (runtime/backfill.py).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

from wasync.actors.policy.backfill import Leg, ThreadTask, leg_over, page_size
from wasync.runtime import model as m
from wasync.runtime.backfill import Direction, Job, JobOutcome, MessageRef, Progress, Trigger


@dataclass(frozen=True)
class Request:
    seq: int
    chat_jid: str
    anchor: MessageRef
    count: int
    direction: Direction


@dataclass
class _Thread:
    task: ThreadTask
    leg: int = 0
    anchor: Optional[MessageRef] = None
    fetched_leg: int = 0
    fetched: int = 0
    words: list[str] = field(default_factory=list)  # each finished leg's word
    error: Optional[str] = None  # why the thread ended early (a request failed, the walk stopped)

    def current(self) -> Optional[Leg]:
        return self.task.legs[self.leg] if self.leg < len(self.task.legs) else None


def thread_word(words: Sequence[str], error: Optional[str] = None) -> str:
    """One result word for a thread: why it ended early if it did, else from its legs."""
    if error is not None:
        return error
    if "complete" in words:
        return "complete"
    return "ok" if "ok" in words else (words[0] if words else "empty")


class HistoryWalk:
    def __init__(self, run_id: str, job: Job, trigger: Trigger, tasks: Sequence[ThreadTask], started_ms: int):
        self.run_id, self.job, self.trigger, self.started_ms = run_id, job, trigger, started_ms
        self.total = len(tasks)
        self._asking = sum(1 for t in tasks if t.legs)  # threads that ask at all (the others are skipped)
        self._todo = deque(_Thread(t) for t in tasks if t.legs)
        self._current: Optional[_Thread] = None
        self._in_flight: Optional[Request] = None
        self._seq = 0
        self.messages = 0
        self.errors = 0
        self.results: list[tuple[str, int, str]] = [(t.chat_jid, 0, t.skip or "empty") for t in tasks if not t.legs]
        self._unreported = list(self.results)

    # --- driving ---------------------------------------------------------------------

    def next_request(self) -> Optional[Request]:
        """The request to send now; None while one is in flight or when the walk is over."""
        if self._in_flight is not None:
            return None
        while True:
            if self._current is None:
                if not self._todo:
                    return None
                self._current = self._todo.popleft()
            t = self._current
            leg = t.current()
            if leg is None:
                self._finish_thread()
                continue
            anchor = t.anchor or leg.anchor
            self._seq += 1
            self._in_flight = Request(self._seq, t.task.chat_jid, anchor, page_size(leg, t.fetched_leg),
                                      leg.direction)
            return self._in_flight

    def answered(self, chat_jid: str, messages: Sequence[m.Message], complete: bool) -> bool:
        """An ON_DEMAND conversation came in; True if it answers the request in flight."""
        req = self._in_flight
        if req is None or req.chat_jid != chat_jid or not _on_side(req, messages):
            return False
        self._in_flight = None
        t = self._current
        assert t is not None
        got = len(messages)
        t.fetched_leg += got
        t.fetched += got
        self.messages += got
        if messages:
            t.anchor = _next_anchor(req.direction, messages)
        # "complete" speaks of what is older: only a walk back can learn it
        word = leg_over(t.current(), req.count, got, t.fetched_leg, complete and req.direction is Direction.BEFORE)
        if word is not None:
            self._next_leg(word)
        return True

    def failed(self, seq: int, word: str) -> bool:
        """The request `seq` could not be sent or was never answered: the thread ends with
        `word` and the walk goes on with the next one. False if `seq` is not in flight."""
        if self._in_flight is None or self._in_flight.seq != seq:
            return False
        self._in_flight = None
        self.errors += 1
        assert self._current is not None
        self._current.error = word
        self._finish_thread()
        return True

    def cancel(self, word: str) -> None:
        """Stop: the thread in flight and every one not started end with `word`."""
        if self._in_flight is not None:
            self.failed(self._in_flight.seq, word)
        elif self._current is not None:  # between two pages
            self._current.error = word
            self._finish_thread()
        while self._todo:
            t = self._todo.popleft()
            self.results.append((t.task.chat_jid, 0, word))
            self._unreported.append(self.results[-1])

    # --- reading -----------------------------------------------------------------------

    @property
    def in_flight(self) -> Optional[Request]:
        return self._in_flight

    @property
    def done(self) -> bool:
        return self._in_flight is None and self._current is None and not self._todo

    def take_finished(self) -> list[tuple[str, int, str]]:
        """Threads finished since the last call: (chat, messages fetched, result word)."""
        out, self._unreported = self._unreported, []
        return out

    def progress(self) -> Progress:
        return Progress(self.run_id, self.job, self.trigger, self.started_ms, self.total, len(self.results),
                        self.messages)

    def outcome(self, now_ms: int) -> JobOutcome:
        ok = self.errors == 0 or self.errors < self._asking  # some threads failing is a partial success
        return JobOutcome(ok=ok, threads=len(self.results), messages=self.messages, errors=self.errors,
                          duration_ms=max(0, now_ms - self.started_ms),
                          error_code=None if ok else "all_threads_failed",
                          error_message=None if ok else f"every request failed ({self.errors})",
                          thread_results=tuple(self.results))

    # --- inside --------------------------------------------------------------------------

    def _next_leg(self, word: str) -> None:
        t = self._current
        t.words.append(word)
        t.leg += 1
        t.anchor, t.fetched_leg = None, 0
        if t.current() is None:
            self._finish_thread()

    def _finish_thread(self) -> None:
        t = self._current
        self._current = None
        if t is None:
            return
        self.results.append((t.task.chat_jid, t.fetched, thread_word(t.words, t.error)))
        self._unreported.append(self.results[-1])


def _on_side(req: Request, messages: Sequence[m.Message]) -> bool:
    """Whether every message lies on the asked side of the anchor (ties allowed: WhatsApp
    times are seconds)."""
    if req.direction is Direction.BEFORE:
        return all(msg.ts_client_ms <= req.anchor.ts_ms for msg in messages)
    return all(msg.ts_client_ms >= req.anchor.ts_ms for msg in messages)


def _next_anchor(direction: Direction, messages: Sequence[m.Message]) -> MessageRef:
    """The next page's anchor: the oldest message of a page back, the newest of a page
    forward. Among messages of the same second the first (back) or last (forward) one in
    the answer's order, which is the phone's order: the anchor stays inside the page."""
    if direction is Direction.BEFORE:
        pick = min(messages, key=lambda msg: msg.ts_client_ms)
    else:
        pick = max(reversed(messages), key=lambda msg: msg.ts_client_ms)
    return MessageRef(pick.id, pick.ts_client_ms, pick.direction is m.Direction.OUTBOUND)
