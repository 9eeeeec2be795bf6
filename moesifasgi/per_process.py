"""State that belongs to the process that made it.

A thread, an SQLite connection or an asyncio task does not survive a fork
(gunicorn --preload, multiprocessing): a child forked from a process that holds
one must make its own and never touch the parent's. Every such piece of state
goes through :class:`PerProcess`; code that must act at fork time registers with
:func:`after_fork_in_child`.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Generic, List, Optional, TypeVar

__all__ = ["PerProcess", "after_fork_in_child", "current_pid"]

T = TypeVar("T")

_pid = os.getpid()
_hooks: List[Callable[[], None]] = []


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()
    for hook in list(_hooks):
        hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def current_pid() -> int:
    """os.getpid() without a system call per request; kept right across fork."""
    return _pid


def after_fork_in_child(hook: Callable[[], None]) -> None:
    """Call ``hook`` in a forked child, right after the fork, before any request can run."""
    _hooks.append(hook)


class PerProcess(Generic[T]):
    """One value per process, made by ``factory`` on first use.

    In a forked child, :meth:`get` makes a new value and :meth:`peek` returns None:
    the parent's value is kept referenced (so it is never finalized in the child,
    where its thread or connection is not ours) but never handed out.
    """

    __slots__ = ("_factory", "_value", "_pid", "_lock", "_inherited")

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: Optional[T] = None
        self._pid = 0
        self._lock = threading.Lock()
        self._inherited: List[T] = []

    def get(self) -> T:
        value = self._value
        if value is not None and self._pid == os.getpid():
            return value
        with self._lock:
            pid = os.getpid()
            if self._value is None or self._pid != pid:
                if self._value is not None:
                    self._inherited.append(self._value)
                self._value, self._pid = self._factory(), pid
            return self._value

    def peek(self) -> Optional[T]:
        """This process's value, or None if it has made none yet."""
        return self._value if self._pid == os.getpid() else None
