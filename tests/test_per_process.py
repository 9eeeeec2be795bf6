from __future__ import annotations

import multiprocessing
import os

import pytest

from moesifasgi.per_process import PerProcess, current_pid


def test_a_per_process_value_is_made_once_and_then_reused() -> None:
    made = []
    state = PerProcess(lambda: made.append(1) or object())
    assert state.peek() is None
    first = state.get()
    assert state.get() is first and state.peek() is first and len(made) == 1


def _in_child(state: PerProcess, parent_value_id: int, out) -> None:
    out.put((state.peek() is None, id(state.get()) != parent_value_id, current_pid() == os.getpid()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_sees_its_parents_value_and_makes_its_own() -> None:
    state = PerProcess(dict)
    parent_value = state.get()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(state, id(parent_value), out))
    child.start()
    result = out.get(timeout=60)
    child.join(60)
    assert result == (True, True, True)
    assert state.get() is parent_value  # the parent keeps its own
