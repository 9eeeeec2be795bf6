"""One process's connection to the queue file, and what to do when the file fails.

Every long-lived user of the file (each worker's event writer, the profile
writer, the flusher) holds its connection through a `QueueFile`, so that the
same three rules apply everywhere:

- **replaced**: before each use the path is stat()ed; when the file or its
  directory was removed or replaced, the connection (which would keep writing
  an unlinked inode nobody drains) is closed and the path reopened;
- **corrupt**: whoever meets "malformed" / "not a database" first moves the file
  aside (`quarantine`, once for all processes) and the caller retries on a
  fresh file; the flusher later salvages what the moved file still holds
  (`storage.salvage`);
- **disk full**: a holder with a reserve (the flusher) deletes it and retries,
  so that delivery, which frees space, keeps going (see `storage.space`).
"""
from __future__ import annotations

import logging
import sqlite3
from typing import Optional, Tuple

from ..diagnostics import problems
from . import QueueError, connect, file_identity, is_corruption, is_disk_full, quarantine
from .space import Reserve

logger = logging.getLogger(__name__)


def is_busy(exc: BaseException) -> bool:
    """True for "database is locked" / "busy": another process holds the lock; try again."""
    if isinstance(exc, QueueError) and exc.__cause__ is not None:
        # connect() met the lock: a first connection that waited to migrate a new
        # file while another process held the lock for over the busy timeout.
        exc = exc.__cause__
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc)
    return "locked" in text or "busy" in text


class QueueFile:
    def __init__(self, path: str, *, reserve: bool = False) -> None:
        self.path = path
        self.opened = 0  # connections opened so far: a change means a new file
        self._conn: Optional[sqlite3.Connection] = None
        # (device, inode) seen when the connection was opened, or attempted: a
        # file that failed to open as corrupt is moved aside only if still it.
        self._identity: Optional[Tuple[int, int]] = None
        self.reserve = Reserve(path) if reserve else None
        # (WAL frames, frames checkpointed) seen by the last recovery from a full disk.
        self._last_checkpoint: Optional[Tuple[int, int]] = None

    def connection(self) -> sqlite3.Connection:
        """The open connection, (re)opened when there is none or the path now leads elsewhere."""
        if self._conn is not None and file_identity(self.path) != self._identity:
            problems.report(f"replaced:{self.path}", "moesifasgi: the queue file %s was removed or replaced; "
                            "reopening it", self.path)
            self.close()
        if self._conn is None:
            self._identity = file_identity(self.path)
            self._conn = connect(self.path)
            if self._identity is None:  # connect created it
                self._identity = file_identity(self.path)
            self.opened += 1
            if self.reserve is not None:
                self.reserve.ensure()
        return self._conn

    def recover(self, exc: BaseException) -> bool:
        """Called with an error met on this file; True when trying again at once may work.

        A corrupt file is moved aside (the path then leads to a fresh one); on a
        full disk the reserve, if held, is released. Other errors close the
        connection so that the next use reopens the path.
        """
        if is_corruption(exc):
            corrupt = self._identity
            self.close()
            try:
                moved = quarantine(self.path, corrupt)
            except OSError as move_error:
                problems.report(f"quarantine-failed:{self.path}", "moesifasgi: the queue file %s is corrupt (%s) "
                                "and cannot be moved aside (%s)", self.path, exc, move_error, level=logging.ERROR)
                return False
            if moved:
                problems.report(f"quarantined:{moved}", "moesifasgi: the queue file %s is corrupt (%s); it was "
                                "moved to %s and a new queue file started (the flusher delivers what can still "
                                "be read from it)", self.path, exc, moved, level=logging.ERROR)
            return corrupt is not None and file_identity(self.path) != corrupt
        if is_disk_full(exc):
            released = self.reserve is not None and self.reserve.release()
            if released:
                problems.report(f"reserve:{self.path}", "moesifasgi: the disk of %s is full; the flusher released "
                                "its reserve (%s) to keep delivering", self.path, self.reserve.path,
                                level=logging.ERROR)
            # Move the WAL's pages into the database so that the WAL starts over
            # instead of needing to grow: the next transactions then fit.
            # Only a checkpoint that found something new to move is worth a retry:
            # when the WAL holds what the last one already saw (or nothing), the
            # same write fails again, and a writer that retried on that would hold
            # its events, and its flush() callers, for ever.
            checkpointed = False
            if self._conn is not None:
                try:
                    busy, frames, moved = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    checkpointed = not busy and frames > 0 and (frames, moved) != self._last_checkpoint
                    self._last_checkpoint = (frames, moved)
                except sqlite3.Error:
                    pass
            return released or checkpointed
        if not is_busy(exc) and not isinstance(exc, QueueError):
            self.close()
        return False

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass
