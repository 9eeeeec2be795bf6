"""Running callbacks that may be `async def` from code that may have no event loop.

Outgoing calls are made from sync code, from threads and from coroutines alike,
while the settings callbacks may be plain functions or coroutines. These helpers
let one async implementation of the recording steps serve every case without
blocking a running loop.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, Callable, Coroutine, Optional, Set, TypeVar

T = TypeVar("T")

__all__ = ["WouldBlock", "is_async_callable", "run_on_private_loop", "run_without_loop", "running_loop", "spawn",
           "wait_background"]


class WouldBlock(RuntimeError):
    """A coroutine expected to finish at once had to wait for something."""


def is_async_callable(function: Optional[Callable[..., Any]]) -> bool:
    """True for an `async def` function, a partial of one, or an object with an async __call__."""
    while isinstance(function, functools.partial):
        function = function.func
    if function is None:
        return False
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(getattr(function, "__call__", None))


def running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_without_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run, right here, a coroutine that only awaits plain callbacks.

    Such a coroutine never suspends, so it needs no event loop: one step
    finishes it. One that does suspend (a plain function returned an awaitable
    that waits) is closed and WouldBlock raised, rather than blocking.
    """
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise WouldBlock("a settings callback returned an awaitable that had to wait; declare it with async def")


def run_on_private_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a new event loop, in a thread that runs none."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


# The loop keeps only weak references to tasks; these must not vanish midway.
_background: Set["asyncio.Task[Any]"] = set()


def spawn(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> "asyncio.Task[Any]":
    """Run `coro` as a task on `loop` (the caller's thread runs it), kept alive until done."""
    task = loop.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def wait_background(timeout: float) -> bool:
    """Wait, at most `timeout` seconds, for the tasks spawn() started; True if none is left."""
    loop = asyncio.get_running_loop()
    pending = [task for task in _background if not task.done() and task.get_loop() is loop]
    if not pending:
        return True
    _, still = await asyncio.wait(pending, timeout=timeout)
    return not still
