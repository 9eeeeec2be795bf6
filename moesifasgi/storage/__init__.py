"""Opening the shared SQLite queue file and keeping its schema current.

Every process (each web worker, the `moesif-flush` daemon, the CLI) opens its own
connection with the same pragmas. The schema comes from the numbered SQL files in
`migrations/`, applied against `PRAGMA user_version`, each in one
`BEGIN IMMEDIATE` transaction together with its version bump, so that many
workers starting at once migrate exactly once.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import sqlite3
import threading
import time

try:
    import fcntl
except ImportError:  # Windows: no flock; see quarantine()
    fcntl = None  # type: ignore[assignment]
from importlib import resources
from typing import Iterator, List, Optional, Tuple

from .. import queue_location

BUSY_TIMEOUT_MS = 5000
_MIGRATION_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")

# Held by a thread of this process from checking the queue's files until its new
# connection holds SQLite's locks on them (its first read in WAL mode). Closing
# *any* descriptor of a file drops every POSIX lock the process holds on it, and
# prepare_queue_file opens a file that lstat() found missing or not private. Two
# threads opening a new file at once (after the queue directory was removed, a
# worker's event writer and its helper check both reconnect) could interleave:
# one thread's SQLite creates and locks the file between the other's lstat() and
# open(); that close() dropped the locks; another process's last close then
# checkpointed and deleted the -wal that this process kept committing to, and
# those events were gone without a count (tests/test_storage_faults.py).
_OPENING = threading.Lock()
if hasattr(os, "register_at_fork"):
    def _new_opening_lock() -> None:
        global _OPENING
        _OPENING = threading.Lock()  # a thread of the parent may have held it at fork()

    os.register_at_fork(after_in_child=_new_opening_lock)


class QueueError(Exception):
    """The queue file cannot be used (wrong path, corrupt, newer schema...)."""


# SQLite's primary result codes for a damaged file, a full disk and a file that
# is not a database at all.
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
# The WAL is truncated back to this after a checkpoint that emptied it: a large
# backlog's WAL would otherwise keep its high-water size on disk for ever.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024


def is_corruption(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says the file is damaged or not SQLite.

    Only these, never "locked", "readonly" or I/O errors: those pass, and moving
    a healthy file aside would strand its events.
    """
    while exc is not None:
        if isinstance(exc, sqlite3.DatabaseError):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None:
                return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
            text = str(exc)
            return "file is not a database" in text or "malformed" in text
        exc = exc.__cause__  # type: ignore[assignment]
    return False


def is_damaged(exc: BaseException) -> bool:
    """True for "database disk image is malformed" only: a file that is SQLite and
    ours but damaged (is_corruption also accepts "not a database")."""
    return _sqlite_error_is(exc, _SQLITE_CORRUPT, "malformed")


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) is SQLite's "database or disk is full"."""
    return _sqlite_error_is(exc, _SQLITE_FULL, "database or disk is full")


def _sqlite_error_is(exc: Optional[BaseException], primary_code: int, text: str) -> bool:
    """True when the first SQLite error in `exc`'s chain of causes has this primary
    result code (or, on Pythons without `sqlite_errorcode`, says `text`)."""
    while exc is not None:
        if isinstance(exc, sqlite3.DatabaseError):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None:
                return code & 0xFF == primary_code
            return text in str(exc)
        exc = exc.__cause__
    return False


def quarantine(path: str, corrupt_identity: Optional[Tuple[int, int]]) -> Optional[str]:
    """Move the corrupt queue file at `path` (and its -wal/-shm) aside, so that the
    next connection starts a fresh queue; returns the new name.

    Nothing is moved unless `path` is still the very file found corrupt: when
    several workers notice at once, the first moves it and the others must not
    move the fresh file that replaced it. An flock on `<path>.lock` orders them.
    The damaged file is kept for inspection (`sqlite3 FILE .recover`), never deleted.
    """
    if corrupt_identity is None:
        return None
    with os.fdopen(queue_location.open_private_file(path + ".lock"), "rb+") as lock:
        if fcntl is not None:  # without it, the identity check alone narrows the race
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if file_identity(path) != corrupt_identity:
            return None
        target = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        os.rename(path, target)
        for suffix in ("", "-wal", "-shm"):
            try:
                if suffix:
                    os.rename(path + suffix, target + suffix)
                os.chmod(target + suffix, 0o600)  # kept for inspection, still private
            except FileNotFoundError:
                pass
        return target


class SchemaTooNewError(QueueError):
    pass


def migrations() -> List[Tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("moesifasgi.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def latest_version() -> int:
    return migrations()[-1][0]


def file_identity(path: str) -> Optional[Tuple[int, int]]:
    """(device, inode) of the file at `path`, None when there is none.

    A connection keeps using the inode it opened: when the file or its directory
    is removed or replaced, comparing this with the value at open time is how a
    long-lived connection notices it writes to (or drains) a file nobody else sees.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _open_locked(path: str, *, create: bool) -> sqlite3.Connection:
    """Check the files, open the connection and make it take its locks (under _OPENING)."""
    try:
        # Private directory, no symlinks, every file 0600: see queue_location.
        queue_location.prepare_queue_file(path, create=create)
    except (OSError, queue_location.UnsafeQueueLocation) as exc:
        raise QueueError(f"cannot use queue file {path}: {exc}") from exc
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    except sqlite3.Error as exc:
        raise QueueError(f"cannot open queue file {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _incremental_vacuum_if_new(conn)
        _enable_wal(conn)  # reads in WAL mode: the -wal and -shm are open and locked
    except QueueError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise QueueError(f"cannot use queue file {path}: {exc}") from exc
    return conn


def connect(path: str, *, create: bool = True, migrate: bool = True) -> sqlite3.Connection:
    """Open the queue at `path` in autocommit mode with WAL and a busy timeout.

    With `create=False` a missing file is a QueueError instead of a new empty queue
    (the CLI uses this so that a typo in a path is reported, not silently created).
    """
    if not create and not os.path.exists(path):
        raise QueueError(f"no queue file at {path}")
    with _OPENING:
        conn = _open_locked(path, create=create)
    try:
        # NORMAL is durable against process crashes (kill -9) in WAL mode; only an
        # OS crash or power loss can lose the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        # Some builds (Debian's, this project's CI) default to secure_delete ON,
        # which zeroes every page a delete frees: each delivered segment's pages
        # were written to the WAL a second time, then checkpointed (33 WAL pages
        # per batch of 100 events instead of 9, twice the flusher's SQLite CPU).
        # FAST zeroes what is on pages written anyway; freed pages keep their
        # bytes until reused or compacted, as other builds do by default (the
        # README's privacy section says so).
        conn.execute("PRAGMA secure_delete = FAST")
        # Checkpoint before the WAL outgrows what the flusher's disk reserve can
        # absorb: a checkpoint on a full disk must be able to grow the database.
        from .space import wal_autocheckpoint_pages
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_autocheckpoint_pages(conn)}")
        if migrate:
            apply_migrations(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise QueueError(f"cannot use queue file {path}: {exc}") from exc
    except QueueError:
        conn.close()
        raise
    return conn


# Tables every moesifasgi queue has had since its first schema: how a read-only
# open tells our file from any other SQLite database given by mistake.
_QUEUE_TABLES = ("events", "counters", "dead_letters", "kv", "leases")


def connect_readonly(path: str) -> sqlite3.Connection:
    """Open an existing queue at `path` for reading only (`status`, `peek`, listings).

    Nothing about the file changes: no creation, no migration, no switch to WAL,
    no write (SQLite refuses them on this connection). A missing file, a file that
    is not SQLite, an SQLite file without the queue's tables and a schema newer
    than this code are each a QueueError with one line that says which.
    (Opening a WAL file read-only may create its empty `-wal`/`-shm` companions,
    as any reader does; the database itself is untouched.)
    """
    if not os.path.exists(path):
        raise QueueError(f"no queue file at {path}")
    if os.path.isdir(path):
        raise QueueError(f"{path} is a directory, not a queue file")
    uri = pathlib.Path(os.path.abspath(path)).as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise QueueError(f"cannot open queue file {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = 1")
        with _OPENING:  # its first read may create and lock the -wal and -shm: see _OPENING
            version = schema_version(conn)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in _QUEUE_TABLES if t not in tables]
        if version < 1 or missing:
            raise QueueError(f"{path} is not a moesifasgi queue (an SQLite file without the queue's tables)")
        newest = latest_version()
        if version > newest:
            raise SchemaTooNewError(
                f"the queue file has schema version {version}, newer than this moesifasgi knows "
                f"({newest}); upgrade moesifasgi")
        # An older schema is read as it is (what it lacks reads as empty): the app
        # that writes it may be older than the CLI looking at it.
    except sqlite3.DatabaseError as exc:
        conn.close()
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_NOTADB or "not a database" in str(exc):
            raise QueueError(f"{path} is not a moesifasgi queue (not an SQLite database)") from exc
        raise QueueError(f"cannot read queue file {path}: {exc}") from exc
    except QueueError:
        conn.close()
        raise
    return conn


def _incremental_vacuum_if_new(conn: sqlite3.Connection) -> None:
    # auto_vacuum can only be chosen before the first table exists (an existing
    # file needs a VACUUM to switch: see storage.maintenance). INCREMENTAL lets the
    # flusher give the pages of a drained backlog back to the disk in small steps.
    # Before WAL is switched on: that writes the first page.
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Switching to WAL needs a moment of exclusive access; when several workers
    # open a brand new file at once, one of them may see SQLITE_BUSY here.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise QueueError(f"the queue file cannot use WAL journaling (got {mode!r}); is it on a network filesystem?")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction taken up front (BEGIN IMMEDIATE), rolled back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        try:
            conn.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed (disk full, I/O error) may leave the
            # transaction open; the next BEGIN would then fail for ever.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise


def _statements(script: str) -> Iterator[str]:
    """Split a SQL script into statements (trigger bodies contain semicolons)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            pending = ""
            if statement:
                yield statement
    if pending.strip() and not all(l.strip().startswith("--") or not l.strip() for l in pending.splitlines()):
        raise QueueError("incomplete SQL statement at the end of a migration file")


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def apply_migrations(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; return the version now in force."""
    steps = migrations()
    newest = steps[-1][0]
    current = schema_version(conn)
    if current > newest:
        raise SchemaTooNewError(
            f"the queue file has schema version {current}, newer than this moesifasgi knows "
            f"({newest}); upgrade moesifasgi on every process that shares this queue"
        )
    if current == newest:
        return current
    for version, name, sql in steps:
        with immediate(conn):
            # Re-read under the write lock: another process may have migrated
            # between our first look and taking the lock.
            if schema_version(conn) >= version:
                continue
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(version)}")
    return schema_version(conn)
