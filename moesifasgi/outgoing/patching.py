"""Wrapping a library method exactly once per process, and unwrapping it for tests.

A wrapper never captures anything by itself: it asks its `Slot` for the current
recorder. Installing again (a second middleware, an app rebuilt, this package
re-imported) finds the wrapper already in place, by a mark that survives other
libraries wrapping ours with functools.wraps, and only swaps the recorder. So a
call is never captured twice, whatever the number of installs.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

MARK = "__moesifasgi_outgoing__"
# Sentry, OpenTelemetry and friends may wrap the same methods; their wrappers
# point at ours through __wrapped__. A few levels is plenty.
_MAX_DEPTH = 16


class Slot:
    """Where a wrapper finds the recorder to use; None makes it a pass-through."""

    __slots__ = ("recorder", "wrapper")

    def __init__(self) -> None:
        self.recorder: Any = None
        # Our wrapper itself: functools.wraps copies the mark onto any wrapper of
        # ours, and this tells the two apart.
        self.wrapper: Any = None


def find_slot(function: Any) -> Optional[Slot]:
    for _ in range(_MAX_DEPTH):
        if function is None:
            return None
        slot = getattr(function, MARK, None)
        # Duck-typed: a re-imported copy of this module has its own Slot class.
        if slot is not None and hasattr(slot, "recorder"):
            return slot
        function = getattr(function, "__wrapped__", None)
    return None


def wrap_method(cls: type, name: str, make_wrapper: Callable[[Callable[..., Any], Slot], Callable[..., Any]]) -> Slot:
    """Wrap `cls.name` with `make_wrapper(original, slot)` unless it is wrapped already."""
    current = getattr(cls, name)
    slot = find_slot(current)
    if slot is not None:
        return slot
    slot = Slot()
    wrapper = functools.wraps(current)(make_wrapper(current, slot))
    setattr(wrapper, MARK, slot)
    slot.wrapper = wrapper
    setattr(cls, name, wrapper)
    return slot


def unwrap_method(cls: type, name: str) -> None:
    """Put the original method back, or, when someone wrapped ours since, turn ours off."""
    current = cls.__dict__.get(name)
    slot = find_slot(current)
    if slot is None:
        return
    if slot.wrapper is current:
        setattr(cls, name, current.__wrapped__)
    slot.recorder = None
