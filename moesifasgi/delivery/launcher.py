"""Starting the flusher FLUSHER asks for, from a web worker: one per worker process and queue file.

The middleware calls `ensure_started(settings)` on lifespan startup and on every
request (apps without lifespan), from inside the running event loop, and
`await stop_flusher()` on lifespan shutdown. What the task does depends on FLUSHER:

- "helper" (the default; "embedded" is accepted as its old name): a
  `HelperSupervisor` that keeps one helper process draining for all the workers
  (helper_supervisor.py); the workers only look at the lease every few seconds.
- "in-process": a `Flusher` on the worker's own loop; every worker competes for
  the lease and the one that holds it drains.
- "external": nothing; `moesif-flush run` drains.

Fork safety: nothing is created at import; state is per process. A child forked
from a process that already started a flusher (gunicorn --preload, multiprocessing)
starts its own: the inherited task, thread and SQLite connection belong to the
parent and are never touched again.

Nothing here may raise into the app: a failure is logged once and the app carries on.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Dict, List, Optional

from moesifasgi.diagnostics import ProblemLog
from moesifasgi.per_process import after_fork_in_child

if TYPE_CHECKING:  # the middleware imports this module: keep that import light and acyclic
    from moesifasgi.settings import Settings

    from .flusher import Flusher, FlusherOptions
    from .helper_supervisor import HelperOptions, HelperSupervisor

logger = logging.getLogger(__name__)

__all__ = ["ensure_started", "stop_flusher", "running_flushers", "running_helpers"]


@dataclass
class _Entry:
    flusher: Optional[Flusher]  # "in-process" (or a helper's fallback)
    task: "Optional[asyncio.Future[None]]"
    loop: Optional[asyncio.AbstractEventLoop]
    supervisor: Optional[HelperSupervisor] = None  # "helper"


# queue path -> this process's flusher. The request path only does a membership
# test on it, so it must never hold entries inherited from a parent process.
_active: Dict[str, _Entry] = {}
_owner_pid: Optional[int] = None
_inherited: List[_Entry] = []  # kept referenced so their objects are never finalized here
_once = ProblemLog(logger, interval=None)  # each failure once per process
_fork_hook_installed = False


def ensure_started(settings: Settings, options: Optional[FlusherOptions] = None,
                   helper_options: Optional[HelperOptions] = None) -> None:
    """Start this process's flusher for `settings.queue_path` unless it runs already.

    Cheap after the first call (one dict lookup). Does nothing but remember the
    path when `settings.flusher == "external"`. `options` configure an in-process
    flusher, `helper_options` the helper supervisor (tests shorten their timings).
    """
    if settings.queue_path in _active:
        return
    _start(settings, options, helper_options)


def _start(settings: Settings, options: Optional[FlusherOptions], helper_options: Optional[HelperOptions]) -> None:
    try:
        _forget_parent_state()
        path = settings.queue_path
        if settings.flusher == "external":
            _active[path] = _Entry(None, None, None)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _log_once("no-loop", "moesifasgi: ensure_started() was called outside an event loop; "
                                 "the flusher will start on the next call from inside one",
                      level=logging.WARNING)
            return
        from .flusher import Flusher, FlusherOptions
        from .helper_supervisor import HelperSupervisor

        entry = _Entry(None, None, loop)

        def start_in_process() -> "asyncio.Future[None]":
            opts = options or FlusherOptions(batch_size=settings.batch_size, concurrency=settings.flush_concurrency,
                                             batch_wait=settings.event_batch_timeout)
            entry.flusher = Flusher(path, settings.application_id, settings.base_uri, opts)
            return asyncio.ensure_future(_supervise(entry.flusher))

        if settings.flusher == "helper":
            entry.supervisor = HelperSupervisor(settings, helper_options, fallback=start_in_process)
            entry.task = loop.create_task(_supervise_helper(entry.supervisor), name=f"moesif-flush-helper:{path}")
        else:
            entry.task = start_in_process()
        _active[path] = entry
        # When the loop ends (tests, servers that restart their loop), the next
        # call from a new loop starts a new flusher.
        entry.task.add_done_callback(lambda _task: _active.pop(path) if _active.get(path) is entry else None)
    except Exception:
        _log_once("start", "moesifasgi: cannot start the flusher; events stay queued", exc_info=True)


def _forget_parent_state() -> None:
    global _fork_hook_installed
    if not _fork_hook_installed:
        # Clears the map in a child right after fork, before any request can see a
        # parent's entry; the pid check below covers forks that skip the hook.
        after_fork_in_child(_after_fork)
        _fork_hook_installed = True
    if _owner_pid != os.getpid():
        _after_fork()


def _after_fork() -> None:
    global _owner_pid
    _inherited.extend(_active.values())
    _active.clear()
    _once.reset()
    _owner_pid = os.getpid()


async def _logging_failure(work: Awaitable[None], key: str, what: str) -> None:
    """Await `work`; an error is logged once and goes no further (never into the app)."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        _log_once(key, f"moesifasgi: {what} stopped on an error; events stay queued", exc_info=True)


async def _supervise(flusher: Flusher) -> None:
    try:
        await _logging_failure(flusher.run(), "run", "the flusher")
    finally:
        try:
            await asyncio.shield(flusher.aclose())
        except BaseException:  # closing is best effort, even when cancelled again
            pass


async def _supervise_helper(supervisor: HelperSupervisor) -> None:
    await _logging_failure(supervisor.run(), "helper", "the flusher helper supervisor")


async def stop_flusher(timeout: float = 5.0) -> None:
    """Stop this process's flushers running on the current loop: in-flight batches
    finish or are released and the lease is released, within about `timeout` seconds."""
    try:
        if _owner_pid != os.getpid():
            return
        loop = asyncio.get_running_loop()
        entries = [(path, e) for path, e in _active.items() if e.task is not None and e.loop is loop]
        for path, entry in entries:
            _active.pop(path, None)
        stops = [entry.flusher.stop(timeout) for _, entry in entries if entry.flusher is not None]
        stops += [entry.supervisor.stop(timeout) for _, entry in entries if entry.supervisor is not None]
        if stops:
            await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), timeout + 1.0)
        for _, entry in entries:
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
        tasks = [e.task for _, e in entries if e.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    except Exception:
        _log_once("stop", "moesifasgi: stopping the flusher failed", exc_info=True)


def running_helpers() -> Dict[str, HelperSupervisor]:
    """This process's helper supervisors by queue path (tests and diagnostics)."""
    if _owner_pid != os.getpid():
        return {}
    return {path: e.supervisor for path, e in _active.items() if e.supervisor is not None}


def running_flushers() -> Dict[str, Flusher]:
    """The flushers this process runs on its own loop, by queue path (for tests and diagnostics)."""
    if _owner_pid != os.getpid():
        return {}
    return {path: e.flusher for path, e in _active.items() if e.flusher is not None}


def _log_once(key: str, message: str, exc_info: bool = False, level: int = logging.ERROR) -> None:
    _once.report(key, message, level=level, exc_info=exc_info)


stop_embedded = stop_flusher  # the old name, for code using moesifasgi_flush.embedded
