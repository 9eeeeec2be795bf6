"""The per-process writer that persists events into the shared SQLite queue.

The request path only appends to an in-memory deque (no lock, no I/O); one
writer thread per process commits what accumulated every few milliseconds in a
single `BEGIN IMMEDIATE` transaction (group commit). The cap on pending events
is checked inside that transaction against a counter kept exact by triggers, so
it holds across every process sharing the file.

A thread rather than an asyncio task: the writer must be able to commit at
interpreter exit and on SIGTERM, when no event loop may be running, and
SQLite releases the GIL while it works, so the app's loop keeps serving.
"""
from __future__ import annotations

import collections
import logging
import os
import sqlite3
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple, Union

from . import jsoncodec, shutdown, storage
from .diagnostics import problems
from .shared_state import SharedState

logger = logging.getLogger("moesifasgi")

# (transaction_id, created_at, event_json)
EventRow = Tuple[str, float, str]
DoneCallback = Callable[[bool], None]

COMMIT_INTERVAL = 0.01
MAX_ROWS_PER_COMMIT = 500
# Events held in memory while the file cannot take them (locked, being
# recreated); beyond this they are dropped and counted rather than risk the
# app's memory.
MAX_BUFFERED = 50_000
# Checked before every commit: events committed into a removed file are lost
# silently, so the window must be as short as a stat() allows.
INODE_CHECK_INTERVAL = 0.0

_INSERT_GROUP = (
    "INSERT INTO events (transaction_id, created_at, body) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') "
    "FROM json_each(?) ORDER BY key"
)


class _Barrier:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


_Item = Union[Tuple[EventRow, Optional[DoneCallback]], _Barrier]


class QueueWriter:
    def __init__(self, path: str, capacity: int, *, commit_interval: float = COMMIT_INTERVAL) -> None:
        self.path = path
        self.capacity = capacity
        self.commit_interval = commit_interval
        self.shared = SharedState()
        self.committed = 0
        self.commits = 0
        self.dropped = 0  # every drop this process saw, for tests and debug logging
        self._buffer: Deque[_Item] = collections.deque()
        self._uncounted_drops = 0  # drops not yet added to the durable counter
        self._drops_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = False
        self._conn: Optional[sqlite3.Connection] = None
        self._inode: Optional[Tuple[int, int]] = None
        self._inode_checked = 0.0
        self._thread = threading.Thread(target=self._run, name="moesifasgi-queue-writer", daemon=True)
        self._thread.start()

    # -- called from the request path -------------------------------------------------

    def submit(self, row: EventRow, on_done: Optional[DoneCallback] = None) -> bool:
        """Queue one event for the next commit; never blocks. False if dropped."""
        if self._stopping or len(self._buffer) >= MAX_BUFFERED:
            self.count_drop()
            problems.report(
                "buffer-full",
                "moesifasgi: %d events wait in memory for the queue file %s; dropping new events",
                len(self._buffer), self.path,
            )
            return False
        self._buffer.append((row, on_done))
        if not self._wakeup.is_set():
            self._wakeup.set()
        return True

    def count_drop(self, count: int = 1) -> None:
        """Count an event dropped before it reached the queue (in the durable counter too)."""
        with self._drops_lock:
            self._uncounted_drops += count
            self.dropped += count

    # -- control ----------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far has been written (or dropped)."""
        if not self._thread.is_alive():
            return not self._buffer
        barrier = _Barrier()
        self._buffer.append(barrier)
        self._wakeup.set()
        return barrier.event.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Commit what is held, then stop the thread and close the connection."""
        if self._stopping:
            return
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._stopping

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wakeup.wait(self.shared.refresh_interval)
            self._wakeup.clear()
            if self._buffer and not self._stopping and len(self._buffer) < MAX_ROWS_PER_COMMIT:
                # Let a few more events arrive so that one transaction carries them all.
                time.sleep(self.commit_interval)
            # Only what is here now: events arriving during this commit wait for
            # the next group instead of trickling out in many tiny transactions.
            backlog = len(self._buffer)
            while backlog > 0 and self._buffer:
                backlog -= self._write_some()
            self._refresh_shared_state()
            if self._stopping and not self._buffer:
                break
        self._write_uncounted_drops()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _take(self) -> Tuple[List[Tuple[EventRow, Optional[DoneCallback]]], List[_Barrier]]:
        items: List[Tuple[EventRow, Optional[DoneCallback]]] = []
        barriers: List[_Barrier] = []
        while self._buffer and len(items) < MAX_ROWS_PER_COMMIT:
            item = self._buffer.popleft()
            if isinstance(item, _Barrier):
                barriers.append(item)
            else:
                items.append(item)
        return items, barriers

    def _write_some(self) -> int:
        """Write one group; return how many buffered items it consumed."""
        items, barriers = self._take()
        accepted = 0
        try:
            accepted = self._insert([row for row, _ in items]) if items else 0
            if not items:
                self._write_uncounted_drops()
        except sqlite3.OperationalError as exc:
            if _is_busy(exc) and not self._stopping:
                # Another process holds the write lock for longer than the busy
                # timeout: keep the events and try again rather than drop them.
                problems.report("busy", "moesifasgi: queue file %s stayed locked: %s; retrying", self.path, exc)
                self._buffer.extendleft(reversed(barriers + items))  # type: ignore[operator]
                time.sleep(0.05)
                return len(items) + len(barriers)
            self._fail(items, exc)
        except Exception as exc:  # disk full, read-only, corrupt, removed...
            if self._moved_corrupt_file(exc):
                # A fresh file takes this group: nothing of it is lost.
                self._buffer.extendleft(reversed(barriers + items))  # type: ignore[operator]
                return len(items) + len(barriers)
            self._fail(items, exc)
        else:
            self.committed += accepted
            self.commits += 1
            if accepted < len(items):
                problems.report(
                    "queue-full",
                    "moesifasgi: the queue holds EVENT_QUEUE_SIZE=%d pending events; new events are dropped "
                    "and counted until the flusher catches up",
                    self.capacity,
                )
            for index, (_, done) in enumerate(items):
                if done is not None:
                    done(index < accepted)
        for barrier in barriers:
            barrier.event.set()
        return len(items) + len(barriers)

    def _insert(self, rows: List[EventRow]) -> int:
        conn = self._connection()
        with storage.immediate(conn):
            pending = conn.execute("SELECT value FROM counters WHERE name = 'pending'").fetchone()[0]
            room = max(0, self.capacity - pending)
            kept = rows[:room]
            if kept:
                # One statement per group, the rows passed as one JSON array that
                # SQLite unpacks in C. executemany would drop and re-take the GIL
                # for every row, and each re-take forces the app's event loop
                # thread to hand the GIL over: that convoy cost more than the
                # writing itself under load. orjson builds the array text in 12 µs
                # for 55 rows where the standard library took 90, all with the GIL.
                conn.execute(_INSERT_GROUP, (jsoncodec.dumps(kept),))
            with self._drops_lock:
                drops = self._uncounted_drops + len(rows) - len(kept)
                self._uncounted_drops = 0
                self.dropped += len(rows) - len(kept)
            if drops:
                conn.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (drops,))
        return len(kept)

    def _write_uncounted_drops(self) -> None:
        with self._drops_lock:
            drops, self._uncounted_drops = self._uncounted_drops, 0
        if not drops:
            return
        try:
            conn = self._connection()
            with storage.immediate(conn):
                conn.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (drops,))
        except Exception:
            with self._drops_lock:
                self._uncounted_drops += drops

    def _moved_corrupt_file(self, exc: Exception) -> bool:
        """When the file is corrupt, move it aside (once, whichever process sees it
        first); True when the path now leads to another file, to retry there."""
        if not storage.is_corruption(exc):
            return False
        # The identity seen when the failing connection was opened (or attempted),
        # never a fresh look: another process may have replaced the file already.
        corrupt = self._inode
        self._reset_connection()
        try:
            moved = storage.quarantine(self.path, corrupt)
        except OSError as move_error:
            problems.report("quarantine-failed", "moesifasgi: the queue file %s is corrupt (%s) and cannot be "
                            "moved aside (%s); events are dropped and counted until it is replaced",
                            self.path, exc, move_error, level=logging.ERROR)
            return False
        if moved:
            problems.report("quarantined", "moesifasgi: the queue file %s is corrupt (%s); it was moved to %s "
                            "and a new queue file started", self.path, exc, moved, level=logging.ERROR)
        return corrupt is not None and storage.file_identity(self.path) != corrupt

    def _fail(self, items: List[Tuple[EventRow, Optional[DoneCallback]]], exc: Exception) -> None:
        problems.report(
            f"write-{type(exc).__name__}",
            "moesifasgi: cannot write to the queue file %s (%s: %s); events are dropped and counted until it works again",
            self.path, type(exc).__name__, exc, level=logging.ERROR,
        )
        self.count_drop(len(items))
        self._reset_connection()
        for _, done in items:
            if done is not None:
                done(False)

    def _connection(self) -> sqlite3.Connection:
        now = time.monotonic()
        if self._conn is not None and now - self._inode_checked > INODE_CHECK_INTERVAL:
            self._inode_checked = now
            # If the file or its directory was removed, our connection writes into
            # an unlinked inode that nobody will ever drain: reopen instead.
            if storage.file_identity(self.path) != self._inode:
                problems.report("replaced", "moesifasgi: queue file %s was removed or replaced; reopening", self.path)
                self._reset_connection()
        if self._conn is None:
            self._inode = storage.file_identity(self.path)  # kept if connect fails (see _moved_corrupt_file)
            self._conn = storage.connect(self.path)
            if self._inode is None:  # connect created it
                self._inode = storage.file_identity(self.path)
            self._inode_checked = now
        return self._conn

    def _reset_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None

    def _refresh_shared_state(self) -> None:
        if not self.shared.due():
            return
        try:
            self.shared.refresh(self._connection())
        except Exception as exc:
            problems.report("shared-state", "moesifasgi: cannot read Moesif config from the queue file: %s", exc)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


# -- one writer per queue file per process ---------------------------------------------

_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_pid() -> int:
    """os.getpid() without a system call per request; kept right across fork."""
    return _pid


_writers: Dict[str, QueueWriter] = {}
_writers_pid = os.getpid()
_writers_lock = threading.Lock()


def writer_for(path: str, capacity: int) -> QueueWriter:
    """This process's writer for `path`, created on first use.

    Objects inherited through fork (gunicorn --preload) are never used: a thread
    or SQLite connection does not survive a fork, so a child starts afresh.
    """
    global _writers_pid
    writer = _writers.get(path)
    if writer is not None and _writers_pid == os.getpid():
        return writer
    with _writers_lock:
        if _writers_pid != os.getpid():
            _writers.clear()
            _writers_pid = os.getpid()
        writer = _writers.get(path)
        if writer is None:
            writer = _writers[path] = QueueWriter(path, capacity)
            _install_exit_hooks()
        return writer


def close_all(timeout: float = 5.0) -> None:
    """Commit and close every writer of this process (lifespan shutdown, exit, SIGTERM)."""
    if _writers_pid != os.getpid():
        return
    for writer in list(_writers.values()):
        writer.close(timeout)
    _writers.clear()


def flush_all(timeout: float = 5.0) -> bool:
    if _writers_pid != os.getpid():
        return True
    return all([writer.flush(timeout) for writer in list(_writers.values())])


def _install_exit_hooks() -> None:
    shutdown.register(flush_all, close_all)
    shutdown.watch_signals()
