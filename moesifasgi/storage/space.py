"""Disk space: keep a full disk from stopping delivery.

SQLite needs free disk for every write, the flusher's included: claiming,
acknowledging and renewing the lease all append to the WAL, and a checkpoint
may have to grow the database file. On a full disk nothing moves, not even the
deletes that would make room. Two guards keep the flusher able to work:

- the writers stop adding events while the file system has less than
  `LOW_SPACE_BYTES` free, unless the database holds enough free pages (left by
  delivered events) to take them: new events are then dropped and counted, and
  the last megabytes stay for the flusher;
- the flusher keeps a reserve file of `RESERVE_BYTES` next to the queue and
  deletes it when SQLite says the disk is full (something else filled it: logs,
  another program), which gives its claims, acks and checkpoints room to finish.
  It is recreated once the space is back.

Both sizes can be set through the environment (`MOESIF_LOW_SPACE_BYTES`,
`MOESIF_RESERVE_BYTES`), for small volumes.
"""
from __future__ import annotations

import os
import sqlite3
from typing import Optional


def _env_bytes(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


LOW_SPACE_BYTES = _env_bytes("MOESIF_LOW_SPACE_BYTES", 16 * 1024 * 1024)
RESERVE_BYTES = _env_bytes("MOESIF_RESERVE_BYTES", 4 * 1024 * 1024)


def wal_autocheckpoint_pages(conn: sqlite3.Connection) -> int:
    """WAL pages between checkpoints: SQLite's 1000, fewer when the reserve is smaller
    than twice that (a checkpoint may grow the database by the WAL's size)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0] or 4096
    return max(64, min(1000, RESERVE_BYTES // page_size // 2))


def free_bytes(path: str) -> Optional[int]:
    """Bytes an unprivileged process may still write on the file system of `path`."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except (OSError, AttributeError):  # no statvfs (Windows) or no directory
        return None
    return st.f_bavail * st.f_frsize


def plenty(path: str) -> bool:
    """Whether the disk of `path` has LOW_SPACE_BYTES free (or cannot tell): a
    writer may add events without looking at the file's free pages."""
    free = free_bytes(path)
    return free is None or free >= LOW_SPACE_BYTES


def room_for(conn: sqlite3.Connection, path: str, nbytes: int) -> bool:
    """May a writer add about `nbytes` of events to the queue now?

    Yes while the disk has LOW_SPACE_BYTES free. Below that, only into the free
    pages inside the file (twice the size: the rows, their index entries and
    their WAL frames).
    """
    if plenty(path):
        return True
    pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return pages * page_size >= 2 * nbytes


class Reserve:
    """The flusher's spare disk space: a file of RESERVE_BYTES at `<queue>.reserve`."""

    def __init__(self, queue_path: str) -> None:
        self.path = queue_path + ".reserve"

    def ensure(self) -> bool:
        """Create the reserve when it is missing and the disk can spare it; True if it exists."""
        if os.path.exists(self.path):
            return True
        if RESERVE_BYTES <= 0:
            return False
        free = free_bytes(self.path)
        if free is not None and free < LOW_SPACE_BYTES + RESERVE_BYTES:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return os.path.exists(self.path)
        try:
            # Real blocks, not a sparse file: deleting it must give space back.
            chunk = b"\0" * 65536
            left = RESERVE_BYTES
            while left > 0:
                left -= os.write(fd, chunk[:left])
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.release()
            return False
        os.close(fd)
        return True

    def release(self) -> bool:
        """Delete the reserve; True when there was one to give back."""
        try:
            os.unlink(self.path)
        except OSError:
            return False
        return True
