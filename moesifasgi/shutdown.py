"""Commit what this process holds before it exits, however its server stops it.

Events wait in the writer's memory for up to one group commit (longer while
another process holds the queue file's lock). Apps with lifespan commit them
at lifespan shutdown; for the others (Django, Flask through a2wsgi or asgiref,
Litestar's per-route middleware), each server ends its processes its own way,
read in their sources:

- uvicorn, and gunicorn's `uvicorn-worker`, restore the SIGTERM handler they
  found (the default) once connections are drained and raise SIGTERM again:
  the process dies by the signal, and neither `atexit` nor the writer's next
  commit runs.
- granian's workers are `multiprocessing` children started by fork: they end
  with `os._exit`, which skips `atexit` but runs multiprocessing's finalizers.
- hypercorn's and daphne's processes return normally: `atexit` runs. (When
  daphne serves a WSGI adapter, interpreter exit can hang forever joining the
  adapter's thread; the writer thread, a daemon, has committed meanwhile.)

So, besides `atexit` and a multiprocessing finalizer:

- On the first call (and again if the handler was replaced), the SIGTERM and
  SIGINT handlers found are wrapped, whatever they are (the server's own, or
  the default, which then commits and dies). A handler that ignores the
  signal is left alone.
- Once the signal came (`requested()`), a call in flight sends its last chunk
  only once its event is committed (granian stops its event loop as soon as the
  last responses are out, before the app's task returns), and, after the app
  returned, waits until what the process holds is committed before it returns
  to the server: every server that drains gracefully waits for its
  calls, so the last group is committed before the process exits, while the
  event loop keeps serving the other calls.
- When no call is in flight, nothing else will: the handler itself waits for
  the writer (bounded), which blocks no call. It waits on an event that the
  writer thread sets, never on a lock the interrupted code could hold; at
  worst a writer stuck behind such a lock makes the wait time out.
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any, Callable, Dict, Optional

try:
    # The C function: signal.getsignal converts its result to an enum, which cost
    # more than everything else this module does per call.
    from _signal import getsignal as _raw_getsignal
except ImportError:  # pragma: no cover - other interpreters
    _raw_getsignal = signal.getsignal

# Waits for the writer in a signal handler; the process is idle then, but a
# server may be waiting for it to exit (gunicorn's graceful timeout is 30 s).
IDLE_FLUSH_TIMEOUT = 10.0
# How long a call in a stopping process waits for its commit.
CALL_COMMIT_TIMEOUT = 10.0
# Before the default action of SIGTERM kills the process.
DYING_FLUSH_TIMEOUT = 3.0

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))

Flush = Callable[[float], Any]


class _ProcessState:
    """Per process: a forked child starts with nothing installed and no call in flight."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.requested = False
        self.in_flight = 0
        self.exit_hooks = False
        self.previous: Dict[int, Any] = {}
        self.seen: Any = object()  # the SIGTERM handler found after the last look


_state = _ProcessState()
_flush: Optional[Flush] = None
_close: Optional[Flush] = None


def _after_fork_in_child() -> None:
    global _state
    _state = _ProcessState()


os.register_at_fork(after_in_child=_after_fork_in_child)


def requested() -> bool:
    """True once this process got SIGTERM or SIGINT: calls then wait for their commit."""
    return _state.requested


def calls_in_flight() -> int:
    """Calls of this process inside a MoesifMiddleware, not yet recorded."""
    return _state.in_flight


def call_started() -> None:
    _state.in_flight += 1


def call_ended() -> None:
    _state.in_flight -= 1


def register(flush: Flush, close: Flush) -> None:
    """Make sure `close(timeout)` runs when this process exits normally, and that
    the signal handler can `flush(timeout)`. Called when a writer starts."""
    global _flush, _close
    _flush, _close = flush, close
    state = _state
    if state.exit_hooks:
        return
    state.exit_hooks = True
    atexit.register(_close_quietly)
    if "multiprocessing" in sys.modules:
        # A multiprocessing child started by fork (granian's workers) ends with
        # os._exit: atexit does not run there, multiprocessing's finalizers do.
        from multiprocessing import util

        util.Finalize(None, _close_quietly, exitpriority=10)


def watch_signals() -> None:
    """Wrap the SIGTERM and SIGINT handlers in place now (see the module docstring).

    Called on every call: when the handler is the one seen last time, it costs
    one look at the handler (the C `getsignal`, no enum). Handlers can only be set from the main thread;
    elsewhere this waits for a call on the main thread.
    """
    state = _state
    if not _SIGNALS or _raw_getsignal(_SIGNALS[0]) is state.seen:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _SIGNALS:
        try:
            current = signal.getsignal(signum)
            if current is not _on_signal and current is not signal.SIG_IGN and current is not None:
                state.previous[signum] = current
                signal.signal(signum, _on_signal)
        except (ValueError, OSError):
            pass
    state.seen = _raw_getsignal(_SIGNALS[0])


def _close_quietly() -> None:
    if _close is not None:
        _close(DYING_FLUSH_TIMEOUT)


def _on_signal(signum: int, frame: Any) -> None:
    state = _state
    state.requested = True
    previous = state.previous.get(signum, signal.SIG_DFL)
    if previous is signal.SIG_DFL:
        # Nobody else handles it: the process dies now, commit first.
        if _close is not None:
            _close(DYING_FLUSH_TIMEOUT)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if state.in_flight <= 0 and _flush is not None:
        _flush(IDLE_FLUSH_TIMEOUT)
    if callable(previous):
        previous(signum, frame)
