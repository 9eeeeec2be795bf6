"""This process's queue writers: one per queue file (and application id), created on
first use, and what commits or closes them all.

The middleware's pipeline, profile updates and shutdown go through here, never
through a `QueueWriter` they made themselves, so that a file keeps one writer
thread per process. Objects inherited through fork (gunicorn --preload) are
never used: a thread or SQLite connection does not survive a fork, so a child
starts afresh.
"""
from __future__ import annotations

import threading
from typing import Dict, Optional, Tuple

from . import shutdown
from .per_process import PerProcess
from .queue_writer import QueueWriter

_writers: PerProcess[Dict[Tuple[str, Optional[str]], QueueWriter]] = PerProcess(dict)
_writers_lock = threading.Lock()


def writer_for(path: str, capacity: int, application_id: Optional[str] = None) -> QueueWriter:
    """This process's writer for `path` and this application id, created on first use."""
    key = (path, application_id)
    writers = _writers.get()
    writer = writers.get(key)
    if writer is not None:
        return writer
    with _writers_lock:
        writer = writers.get(key)
        if writer is None:
            adopted = writers.get((path, None)) if application_id else None
            if adopted is not None and adopted in _profiles_only:
                # Profiles came first and started a writer for this file: the
                # middleware takes it over, so that the file keeps one writer.
                _profiles_only.discard(adopted)
                adopted.capacity = capacity
                adopted.application_id = application_id
                del writers[(path, None)]
                writer = writers[key] = adopted
            else:
                writer = writers[key] = QueueWriter(path, capacity, application_id=application_id)
                _install_exit_hooks()
        return writer


# Writers started by writer_for_queue (profiles before any middleware), which
# the first middleware on the same file adopts.
_profiles_only: "set[QueueWriter]" = set()


def writer_for_queue(path: str, capacity: int) -> QueueWriter:
    """The writer that profile updates for `path` go through: this process's
    (first) writer of that file, or a new one, with `capacity` as its event cap."""
    writers = _writers.get()
    for (writer_path, _), writer in list(writers.items()):
        if writer_path == path and not writer.closed:
            return writer
    with _writers_lock:
        for (writer_path, _), writer in list(writers.items()):
            if writer_path == path and not writer.closed:
                return writer
        writer = writers[(path, None)] = QueueWriter(path, capacity)
        _profiles_only.add(writer)
        _install_exit_hooks()
        return writer


def close_all(timeout: float = 5.0) -> None:
    """Commit and close every writer of this process (lifespan shutdown, exit, SIGTERM)."""
    writers = _writers.peek()
    if writers is None:
        return
    for writer in list(writers.values()):
        writer.close(timeout)
    writers.clear()
    _profiles_only.clear()


def flush_all(timeout: float = 5.0) -> bool:
    writers = _writers.peek()
    if writers is None:
        return True
    return all([writer.flush(timeout) for writer in list(writers.values())])


def _install_exit_hooks() -> None:
    shutdown.register(flush_all, close_all)
    shutdown.watch_signals()
