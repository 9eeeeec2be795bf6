"""The per-process writer that persists events into the shared SQLite queue.

The request path only appends to an in-memory deque (no lock, no I/O); one
writer thread per process commits what accumulated every few milliseconds in a
single transaction (group commit): one statement for the usual group, a
`BEGIN IMMEDIATE` transaction when it meets the cap or carries counts or
profiles (`storage.intake`). The cap on pending events is checked inside that
transaction against a counter kept exact by triggers, so it holds across every
process sharing the file.

A thread rather than an asyncio task: the writer must be able to commit at
interpreter exit and on SIGTERM, when no event loop may be running, and
SQLite releases the GIL while it works, so the app's loop keeps serving.
"""
from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Callable, Deque, Dict, List, Optional, Tuple, Union

from . import storage
from .diagnostics import problems
from . import shared_state
from .storage import intake, space
from .storage.queue_file import QueueFile, is_busy

logger = logging.getLogger(__name__)

EventRow = intake.EventRow
ProfileRow = intake.ProfileRow
DoneCallback = Callable[[bool], None]

COMMIT_INTERVAL = 0.01
MAX_ROWS_PER_COMMIT = 500
# Held in memory while the file cannot take them (locked, being recreated);
# beyond either bound new events are dropped and counted rather than risk the
# app's memory. Bytes matter more than events: 50,000 events of 200 KB would
# be 10 GB.
MAX_BUFFERED = 50_000
MAX_BUFFERED_BYTES = 64 * 1024 * 1024
# What a buffered event costs beyond its JSON text (tuple, floats, deque slot).
_ITEM_OVERHEAD = 200
# Drops are written to the durable counter within about this long, also when
# no event is being written (a broken mask drops every event: monitoring must
# see it before the process dies).
DROPS_INTERVAL = 1.0

class _Barrier:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class _Profiles:
    """Profile updates handed over by `profiles.py`: written in the same group
    commit as the events around them; `future` gets how many were kept."""
    __slots__ = ("rows", "cap", "invalid", "future", "size", "shed")

    def __init__(self, rows: List[ProfileRow], cap: int, invalid: Tuple[str, int], future: "Future[int]") -> None:
        self.rows = rows
        self.cap = cap
        self.invalid = invalid  # (kind, how many were refused by validation): counted in the same commit
        self.future = future
        # Bytes held in memory until the commit, within the writer's byte bound.
        self.size = sum(len(row[3]) for row in rows) + _ITEM_OVERHEAD * len(rows)
        self.shed = 0  # rows left out because memory was full: counted in the commit


_Item = Union[Tuple[EventRow, Optional[DoneCallback]], _Barrier, _Profiles]


class QueueWriter:
    def __init__(self, path: str, capacity: int, *, commit_interval: float = COMMIT_INTERVAL,
                 application_id: Optional[str] = None, max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self.path = path
        self.capacity = capacity
        self.commit_interval = commit_interval
        self.application_id = application_id
        self.max_buffered_bytes = max_buffered_bytes
        self.shared = shared_state.for_queue(path)  # refreshed by this writer's thread
        self.committed = 0
        self.commits = 0
        self.dropped = 0  # every drop this process saw, for tests and debug logging
        self._buffer: Deque[_Item] = collections.deque()
        # Bytes added by submit() and bytes removed by the writer thread: each
        # side only adds to its own total, so no lock on the request path.
        self._bytes_in = 0
        self._bytes_out = 0
        self._uncounted_drops = 0  # drops not yet added to the durable counter
        self._uncounted_profile_drops = 0  # the same for profiles_dropped
        self._uncounted_problems: Dict[str, int] = {}  # per-reason counts not yet written
        self._drops_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = False
        self._file = QueueFile(path)
        self._app: Optional[int] = None  # apps.id of application_id in the open file
        self._app_opened = -1  # the file generation _app belongs to
        self._app_of = application_id  # the application id _app belongs to
        self._one_statement = False  # whether the connection can take a group in one statement
        self._thread = threading.Thread(target=self._run, name="moesifasgi-queue-writer", daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown" (3.12+)
            self._stopping = True  # events are then dropped and profiles written by their caller

    # -- called from the request path -------------------------------------------------

    def submit(self, row: EventRow, on_done: Optional[DoneCallback] = None) -> bool:
        """Queue one event for the next commit; never blocks. False if dropped."""
        size = len(row[2]) + _ITEM_OVERHEAD
        if (self._stopping or len(self._buffer) >= MAX_BUFFERED
                or self._bytes_in - self._bytes_out + size > self.max_buffered_bytes):
            self.count_drop(reason="writer-stopped" if self._stopping else "buffer-full")
            problems.report(
                "buffer-full",
                "moesifasgi: %d events (%d bytes) wait in memory for the queue file %s; dropping new events",
                len(self._buffer), self._bytes_in - self._bytes_out, self.path,
            )
            return False
        self._bytes_in += size
        self._buffer.append((row, on_done))
        if not self._wakeup.is_set():
            self._wakeup.set()
        return True

    def count_drop(self, count: int = 1, reason: Optional[str] = None) -> None:
        """Count an event dropped before it reached the queue (in the durable counter too),
        and under `drop:<reason>` in the per-reason counts when a reason is given."""
        with self._drops_lock:
            self._uncounted_drops += count
            self.dropped += count
            if reason is not None:
                key = "drop:" + reason
                self._uncounted_problems[key] = self._uncounted_problems.get(key, 0) + count
        if reason is not None and not self._wakeup.is_set():
            self._wakeup.set()

    def count_problem(self, reason: str, count: int = 1) -> None:
        """Count, durably and per reason, a problem that did not cost the event."""
        with self._drops_lock:
            self._uncounted_problems[reason] = self._uncounted_problems.get(reason, 0) + count
        if not self._wakeup.is_set():
            self._wakeup.set()

    def submit_profiles(self, rows: List[ProfileRow], cap: int, invalid: Tuple[str, int] = ("user", 0)) -> "Future[int]":
        """Queue profile updates for the next commit; the future resolves with how many
        were kept (the rest dropped and counted). Never raises."""
        future: "Future[int]" = Future()
        item = _Profiles(rows, cap, invalid, future)
        if self._stopping or not self._thread.is_alive():
            # Interpreter exit, after the writers were closed: this thread is the
            # only user of the file now, so the write happens here.
            if self._thread.ident is not None:
                self._thread.join(5.0)
            if self._thread.is_alive():
                future.set_result(0)
                self._profiles_failed([item], RuntimeError("the queue writer is stopping"))
            else:
                self._write_profiles_here(item)
            return future
        if item.rows and self._bytes_in - self._bytes_out + item.size > self.max_buffered_bytes:
            # The file has been unusable for a while and memory holds its bound:
            # only the count goes on, as for events.
            problems.report(
                "profiles-buffer-full",
                "moesifasgi: %d profile updates (%d bytes) do not fit in the %d bytes held in memory for the "
                "queue file %s; dropped and counted", len(item.rows), item.size, self.max_buffered_bytes, self.path,
            )
            item.shed, item.rows, item.size = len(item.rows), [], 0
        self._bytes_in += item.size
        self._buffer.append(item)
        if not self._wakeup.is_set():
            self._wakeup.set()
        return future

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

    @property
    def buffered_bytes(self) -> int:
        return self._bytes_in - self._bytes_out

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        steady = False
        while True:
            if steady and not self._stopping:
                # Under steady traffic the thread wakes once per group, on this
                # timer, rather than once for the first event and again after the
                # interval: each wake-up costs far more CPU than its commit does in
                # a warm loop (cold caches), and the bound on how long an event
                # waits is the same interval after the last commit. The wake-up
                # flag stays set meanwhile, so submit() skips its set().
                if len(self._buffer) < MAX_ROWS_PER_COMMIT:
                    time.sleep(self.commit_interval)
            else:
                self._wakeup.wait(min(self.shared.refresh_interval, DROPS_INTERVAL))
                self._wakeup.clear()
                if self._buffer and not self._stopping and len(self._buffer) < MAX_ROWS_PER_COMMIT:
                    # Let a few more events arrive so that one transaction carries them all.
                    time.sleep(self.commit_interval)
            # Idle again (nothing came during the interval): wait for the next event.
            steady = bool(self._buffer)
            # Only what is here now: events arriving during this commit wait for
            # the next group instead of trickling out in many tiny transactions.
            backlog = len(self._buffer)
            while backlog > 0 and self._buffer:
                backlog -= self._write_some()
            if self._uncounted_drops or self._uncounted_profile_drops or self._uncounted_problems:
                # Counts that came without an event to carry them (every event dropped).
                self._write_uncounted_drops()
            self._refresh_shared_state()
            if self._stopping and not self._buffer:
                break
        self._write_uncounted_drops()
        self._file.close()

    def _take(self) -> Tuple[List[Tuple[EventRow, Optional[DoneCallback]]], List[_Barrier], List[_Profiles]]:
        items: List[Tuple[EventRow, Optional[DoneCallback]]] = []
        barriers: List[_Barrier] = []
        profiles: List[_Profiles] = []
        popleft = self._buffer.popleft
        # Only this thread takes from the buffer: what is there now stays there.
        for _ in range(min(len(self._buffer), MAX_ROWS_PER_COMMIT)):
            item = popleft()
            if item.__class__ is _Barrier:
                barriers.append(item)  # type: ignore[arg-type]
            elif item.__class__ is _Profiles:
                profiles.append(item)  # type: ignore[arg-type]
            else:
                items.append(item)  # type: ignore[arg-type]
        return items, barriers, profiles

    def _write_some(self) -> int:
        """Write one group; return how many buffered items it consumed."""
        items, barriers, profiles = self._take()
        accepted = 0
        kept: List[int] = []
        rows = [row for row, _ in items]
        try:
            if rows or profiles:
                accepted, kept = self._insert(rows, profiles)
            else:  # a flush() with nothing to write: make the drops durable now
                self._write_uncounted_drops()
        except Exception as exc:  # locked, disk full, read-only, corrupt, removed...
            taken: List[_Item] = [*barriers, *profiles, *items]  # barriers first: they only wait
            if is_busy(exc) and not self._stopping:
                # Another process holds the write lock for longer than the busy
                # timeout: keep the events and try again rather than drop them.
                problems.report("busy", "moesifasgi: queue file %s stayed locked: %s; retrying", self.path, exc)
                self._buffer.extendleft(reversed(taken))
                time.sleep(0.05)
                return len(taken)
            if self._file.recover(exc):
                # The corrupt file was moved aside: a fresh one takes this group.
                self._buffer.extendleft(reversed(taken))
                return len(taken)
            if items:
                self._fail(items, exc)
            if profiles:
                self._profiles_failed(profiles, exc)
        else:
            self.committed += accepted
            self.commits += 1
            for index, (_, done) in enumerate(items):
                if done is not None:
                    done(index < accepted)
            for item, count in zip(profiles, kept):
                item.future.set_result(count)
        self._bytes_out += (sum(len(row[2]) for row in rows) + _ITEM_OVERHEAD * len(rows)
                            + sum(item.size for item in profiles))
        for barrier in barriers:
            barrier.event.set()
        return len(items) + len(barriers) + len(profiles)

    def _insert(self, rows: List[EventRow], profiles: List[_Profiles] = ()) -> Tuple[int, List[int]]:  # type: ignore[assignment]
        """One transaction: the events (within the cap and the disk's room), the
        profiles (within theirs), and the counts of what either lost."""
        conn = self._connection()
        if (rows and not profiles and self._one_statement and not self._uncounted_drops
                and not self._uncounted_profile_drops and not self._uncounted_problems
                and space.plenty(self.path) and intake.insert_group(conn, rows, self._app, self.capacity)):
            return len(rows), []  # the usual group: one statement (intake.insert_group)
        with storage.immediate(conn):
            kept_profiles = [self._insert_profiles(conn, item) for item in profiles]
            pending = intake.pending_events(conn)
            room = max(0, self.capacity - pending)
            kept = rows[:room]
            low_space = 0
            if len(kept) < len(rows):
                problems.report(
                    "queue-full",
                    "moesifasgi: the queue holds EVENT_QUEUE_SIZE=%d pending events; new events are dropped "
                    "and counted until the flusher catches up",
                    self.capacity,
                )
            if kept:
                if space.room_for(conn, self.path, sum(len(row[2]) for row in kept)):
                    intake.insert_events(conn, kept, self._app)
                else:
                    problems.report(
                        "disk-low",
                        "moesifasgi: less than %d bytes free on the disk of %s; new events are dropped and "
                        "counted (the rest is kept for the flusher to deliver what is queued)",
                        space.LOW_SPACE_BYTES, self.path, level=logging.ERROR,
                    )
                    low_space = len(kept)
                    kept = []
            refused = len(rows) - len(kept)
            with self._drops_lock:
                earlier = self._uncounted_drops
                earlier_profiles = self._uncounted_profile_drops
                problems_seen = dict(self._uncounted_problems)
            counts = dict(problems_seen)
            if refused - low_space:
                counts["drop:queue-full"] = counts.get("drop:queue-full", 0) + refused - low_space
            if low_space:
                counts["drop:disk-low"] = counts.get("drop:disk-low", 0) + low_space
            intake.add_counts(conn, earlier + refused, counts)
            if earlier_profiles:
                intake.add_counts(conn, earlier_profiles, {}, counter="profiles_dropped")
        # Only now that COMMIT succeeded: a failed one must leave the earlier counts
        # to be written again (and _fail counts this group's rows).
        with self._drops_lock:
            self._uncounted_drops -= earlier
            self._uncounted_profile_drops -= earlier_profiles
            self.dropped += refused
            _subtract(self._uncounted_problems, problems_seen)
        for item, count in zip(profiles, kept_profiles):
            if count < len(item.rows):
                problems.report("profiles-full", "moesifasgi: %d profile updates wait in %s (or its disk is "
                                "low); new ones are dropped until the flusher catches up", item.cap, self.path)
        return len(kept), kept_profiles

    def _insert_profiles(self, conn: sqlite3.Connection, item: _Profiles) -> int:
        """Inside the caller's transaction: one hand-over of profiles and its invalid count."""
        kind, invalid = item.invalid
        if invalid:
            intake.add_counts(conn, invalid, {f"profile-invalid:{kind}": invalid}, counter="profiles_dropped")
        if item.shed:
            intake.add_counts(conn, item.shed, {"profile-drop:buffer-full": item.shed}, counter="profiles_dropped")
        if item.rows and not space.room_for(conn, self.path, sum(len(row[3]) for row in item.rows)):
            intake.add_counts(conn, len(item.rows), {"profile-drop:disk-low": len(item.rows)},
                              counter="profiles_dropped")
            return 0
        return intake.insert_profiles(conn, item.rows, item.cap)

    def _write_profiles_here(self, item: _Profiles) -> None:
        """Write one hand-over in the calling thread (only once the writer thread ended)."""
        for _ in range(3):
            try:
                _, kept = self._insert([], [item])
            except Exception as exc:
                if (self._file.recover(exc) or is_busy(exc)):
                    continue
                self._profiles_failed([item], exc)
                return
            else:
                item.future.set_result(kept[0])
                return
        self._profiles_failed([item], RuntimeError("the queue file stayed locked"))

    def _profiles_failed(self, items: List[_Profiles], exc: BaseException) -> None:
        """Profiles that could not be written: logged, and counted in the file with
        the next write that succeeds (as dropped events are)."""
        lost = sum(len(item.rows) for item in items)
        if lost:
            with self._drops_lock:
                self._uncounted_profile_drops += lost
                key = "profile-drop:write-failed"
                self._uncounted_problems[key] = self._uncounted_problems.get(key, 0) + lost
        for item in items:
            if item.rows:
                problems.report(f"profiles-{type(exc).__name__}",
                                "moesifasgi: cannot queue %d %s profile(s) in %s (%s: %s); they were dropped",
                                len(item.rows), item.rows[0][0], self.path, type(exc).__name__, exc,
                                level=logging.ERROR)
            if not item.future.done():
                item.future.set_result(0)

    def _write_uncounted_drops(self) -> None:
        with self._drops_lock:
            drops = self._uncounted_drops
            profile_drops = self._uncounted_profile_drops
            problems_seen = dict(self._uncounted_problems)
        if not drops and not profile_drops and not problems_seen:
            return
        try:
            conn = self._connection()
            with storage.immediate(conn):
                intake.add_counts(conn, drops, problems_seen)
                if profile_drops:
                    intake.add_counts(conn, profile_drops, {}, counter="profiles_dropped")
        except Exception as exc:  # counted again at the next attempt
            self._file.recover(exc)
            return
        with self._drops_lock:
            self._uncounted_drops -= drops
            self._uncounted_profile_drops -= profile_drops
            _subtract(self._uncounted_problems, problems_seen)

    def _fail(self, items: List[Tuple[EventRow, Optional[DoneCallback]]], exc: Exception) -> None:
        problems.report(
            f"write-{type(exc).__name__}",
            "moesifasgi: cannot write to the queue file %s (%s: %s); events are dropped and counted until it works again",
            self.path, type(exc).__name__, exc, level=logging.ERROR,
        )
        self.count_drop(len(items), reason="write-failed")
        for _, done in items:
            if done is not None:
                done(False)

    def _connection(self) -> sqlite3.Connection:
        conn = self._file.connection()
        application_id = self.application_id  # may be set once, by writer_for adopting a profiles-only writer
        if self._app_opened != self._file.opened or self._app_of != application_id:
            if self._app_opened != self._file.opened:  # a new connection
                self._one_statement = intake.prepare_group_insert(conn)
            self._app = intake.app_number(conn, application_id)
            self._app_opened = self._file.opened
            self._app_of = application_id
        return conn

    def _refresh_shared_state(self) -> None:
        if not self.shared.due():
            return
        try:
            self.shared.refresh(self._connection())
        except Exception as exc:
            problems.report("shared-state", "moesifasgi: cannot read Moesif config from the queue file: %s", exc)


def _subtract(counts: Dict[str, int], written: Dict[str, int]) -> None:
    """Take what was just written out of the counts still to write (caller holds the lock)."""
    for reason, count in written.items():
        left = counts.get(reason, 0) - count
        if left > 0:
            counts[reason] = left
        else:
            counts.pop(reason, None)
