"""asyncio <-> blocking world: call a blocking function from a coroutine without
blocking the event loop.

pykka's `Future.__await__` and `Future.get()` block the calling thread, so a coroutine
must never use them directly (DESIGN, rules of the house): one stuck actor would freeze
every HTTP request, including `/health`. `ask()` runs the call on an executor thread
and waits for it with a timeout instead.

A thread cannot be killed: on timeout the caller gets `BridgeTimeout` at once, but the
call keeps its thread until it returns. Give callers that may hang a bounded executor of
their own (the HTTP app does) rather than the loop's default one, so that hung calls
cannot starve other users of the default executor (e.g. DNS resolution).
"""
from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import Executor
from typing import Any, Callable, Optional

import pykka

# How much longer than pykka's own timeout `ask_actor` waits, so that pykka normally
# gives up first and frees the executor thread.
ACTOR_GRACE_S = 0.25


class BridgeTimeout(TimeoutError):
    """The blocking call did not finish within its timeout."""

    def __init__(self, what: str, timeout_s: float):
        self.what = what
        self.timeout_s = timeout_s
        super().__init__(f"{what} did not answer within {timeout_s:g}s")


def _describe(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _call(fn: Callable, args: tuple, kw: dict, deadline: float) -> Any:
    """Runs on the executor thread. A pykka Future result (e.g. from a proxy method) is
    resolved here too, with what is left of the timeout, so it never reaches the loop."""
    result = fn(*args, **kw)
    if isinstance(result, pykka.Future):
        result = result.get(timeout=max(0.0, deadline - time.monotonic()))
    return result


async def ask(executor: Optional[Executor], fn: Callable, *args: Any, timeout_s: float = 5.0, **kw: Any) -> Any:
    """Run `fn(*args, **kw)` on `executor` (None: the loop's default executor) and
    return its result, or raise `BridgeTimeout` after `timeout_s`. Exceptions raised by
    `fn` propagate unchanged, except pykka's `Timeout`, which becomes `BridgeTimeout`."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout_s
    future = loop.run_in_executor(executor, functools.partial(_call, fn, args, kw, deadline))
    try:
        # wait_for cancels the wrapper on timeout; a call still queued behind busy
        # workers is then cancelled too, so queued calls do not pile up.
        return await asyncio.wait_for(future, timeout_s)
    except (asyncio.TimeoutError, pykka.Timeout) as exc:
        raise BridgeTimeout(_describe(fn), timeout_s) from exc


async def ask_actor(actor_ref: pykka.ActorRef, message: Any, timeout_s: float, *,
                    executor: Optional[Executor] = None) -> Any:
    """`actor_ref.ask(message, timeout=timeout_s)` without blocking the loop."""
    try:
        return await ask(executor, actor_ref.ask, message, timeout=timeout_s, timeout_s=timeout_s + ACTOR_GRACE_S)
    except BridgeTimeout as exc:
        # Report the actor and the caller's timeout, not the internal grace.
        raise BridgeTimeout(f"{actor_ref}", timeout_s) from exc.__cause__
