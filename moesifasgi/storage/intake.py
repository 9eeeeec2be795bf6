"""The writers' statements: events and profiles into the queue, and the counts
of what was dropped on the way.

Each function runs inside the caller's write transaction (`storage.immediate`),
except `app_number`, which takes its own when it must add a row, and
`insert_group`, which is a transaction of one statement: a writer groups an
insert with the counts that belong to it, so that one COMMIT makes both
durable, or neither.
"""
from __future__ import annotations

import functools
import sqlite3
import time
from typing import Dict, List, Optional, Sequence, Tuple

from . import immediate

# (transaction_id, created_at, event_json)
EventRow = Tuple[str, float, str]
# (kind, profile_id, created_at, body)
ProfileRow = Tuple[str, str, float, str]

# A group is stored as segments: one row holding up to SEGMENT_EVENTS events
# (and about SEGMENT_BYTES of JSON), their texts joined by commas (migration
# 0005). The flusher then claims, reads and deletes one row per segment, not
# per event: per-row work was most of the queue's cost per drained event. The
# cap of 100 is the default BATCH_SIZE, so that a segment normally fits a
# batch whole; a smaller BATCH_SIZE splits a segment once, when it is claimed.
# All the segments of a group go in one statement, so that the writer takes
# the GIL back once per group: each re-take waits for the app's event loop to
# hand it over, and that wait stretches the commit window under load (and
# with it what a kill -9 loses in batched mode).
SEGMENT_EVENTS = 100
SEGMENT_BYTES = 1 << 20
# 5 parameters a row stays under SQLite's oldest limit of 999 per statement.
_MAX_ROWS_PER_STATEMENT = 160

# (transaction_id, created_at, body, app, event_count, lengths)
SegmentRow = Tuple[str, float, bytes, Optional[int], int, Optional[str]]


@functools.lru_cache(maxsize=None)
def _insert_sql(rows: int) -> str:
    return ("INSERT INTO events (transaction_id, created_at, body, app, event_count, lengths) VALUES "
            + ",".join(["(?,?,'',?,?,?)"] * rows))


@functools.lru_cache(maxsize=None)
def _bodies_sql(rows: int) -> str:
    return "INSERT INTO event_bodies (id, body) VALUES " + ",".join(["(?,?)"] * rows)


def segment(rows: Sequence[EventRow], app: Optional[int]) -> SegmentRow:
    """One segment row from `rows` (in order): their JSON joined by commas as UTF-8."""
    texts = [row[2] for row in rows]
    joined = ",".join(texts)
    if joined.isascii():  # O(1) in CPython: then characters are bytes
        lengths = [len(t) for t in texts]
        body = joined.encode("ascii")
    else:
        lengths = [len(t.encode("utf-8")) for t in texts]
        body = joined.encode("utf-8")
    return (rows[0][0], min(row[1] for row in rows), body, app, len(rows),
            None if len(rows) == 1 else ",".join(map(str, lengths)))


def segments(rows: Sequence[EventRow], app: Optional[int], *, max_events: int = SEGMENT_EVENTS,
             max_bytes: int = SEGMENT_BYTES) -> List[SegmentRow]:
    """`rows` cut into segments of at most `max_events` events and about `max_bytes`."""
    out: List[SegmentRow] = []
    start, size = 0, 0
    for index, row in enumerate(rows):
        if index > start and (index - start >= max_events or size + len(row[2]) > max_bytes):
            out.append(segment(rows[start:index], app))
            start, size = index, 0
        size += len(row[2]) + 1
    if start < len(rows):
        out.append(segment(rows[start:], app))
    return out


def insert_segments(conn: sqlite3.Connection, rows: Sequence[SegmentRow]) -> None:
    """INSERT segment rows in order (their JSON into event_bodies): two statements per 160 rows."""
    for start in range(0, len(rows), _MAX_ROWS_PER_STATEMENT):
        chunk = rows[start:start + _MAX_ROWS_PER_STATEMENT]
        params: List[object] = []
        for tid, created_at, _, app, count, lengths in chunk:
            params += (tid, created_at, app, count, lengths)
        last = conn.execute(_insert_sql(len(chunk)), params).lastrowid
        # Under the write lock, AUTOINCREMENT gives the rows of one INSERT
        # consecutive ids, the last one reported here.
        first = int(last) - len(chunk) + 1  # type: ignore[arg-type]
        bodies: List[object] = []
        for offset, row in enumerate(chunk):
            bodies += (first + offset, row[2])
        conn.execute(_bodies_sql(len(chunk)), bodies)


# A writer's usual group (every event fits under the cap, no counts to add) is
# written by one statement in autocommit mode instead of a transaction of five
# (BEGIN IMMEDIATE, the cap's SELECT, two INSERTs, COMMIT). Each statement
# gives up the GIL while SQLite works and must take it back from the app's
# event loop, which then sleeps until the GIL is free again: one statement
# instead of five cut those waits of a busy worker's loop from 160 to about 95
# per 1,000 requests, and the writer thread's CPU per group from 843-873 µs to
# 630-782 (benchmarks/worker_split.py and wake_cost.py; the README's Performance).
# The waits themselves cost the loop little CPU, it turned out: a trial that
# removed nearly all of them did not make the loop cheaper (README).
#
# An INSTEAD OF trigger on a TEMP view does the work: it inserts each segment
# and its body, and refuses the whole statement (RAISE(ABORT) undoes every row
# it wrote) when a segment would take the pending events over the cap; the
# writer then takes the careful path, which keeps what fits and counts the
# rest. The view is this connection's own (TEMP, kept in memory): nothing in
# the file changes, so processes of every version keep sharing it. In autocommit
# mode an INSERT takes the write lock before it reads anything, as BEGIN
# IMMEDIATE does, so the cap's test and the inserts are one atomic step.
_INTAKE_SCHEMA = """
PRAGMA temp_store = MEMORY;
CREATE TEMP VIEW IF NOT EXISTS moesif_intake
    (transaction_id, created_at, body, app, event_count, lengths, cap)
    AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;
CREATE TEMP TRIGGER IF NOT EXISTS moesif_intake_insert INSTEAD OF INSERT ON moesif_intake
BEGIN
    SELECT RAISE(ABORT, 'moesifasgi: over the cap')
        WHERE (SELECT value FROM counters WHERE name = 'pending') + NEW.event_count > NEW.cap;
    INSERT INTO events (transaction_id, created_at, body, app, event_count, lengths)
        VALUES (NEW.transaction_id, NEW.created_at, '', NEW.app, NEW.event_count, NEW.lengths);
    INSERT INTO event_bodies (id, body) VALUES (last_insert_rowid(), NEW.body);
END;
"""
_OVER_CAP = "moesifasgi: over the cap"
# 7 parameters a segment, within SQLite's oldest limit of 999 per statement.
_MAX_GROUP_SEGMENTS = 142


def prepare_group_insert(conn: sqlite3.Connection) -> bool:
    """Create this connection's TEMP view for `insert_group`; False when SQLite
    refuses (the writer then writes every group the careful way)."""
    try:
        conn.executescript(_INTAKE_SCHEMA)
        # A connection opened while another process was migrating the file may
        # hold an older copy of its schema. SQLite reads the schema again when a
        # statement names something that copy lacks, but not for names inside a
        # trigger's body: name the trigger's tables and columns here first.
        conn.execute("SELECT transaction_id, created_at, body, app, event_count, lengths, "
                     "(SELECT body FROM event_bodies WHERE 0), (SELECT value FROM counters WHERE 0) "
                     "FROM events WHERE 0").fetchall()
    except sqlite3.Error:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _group_sql(segment_count: int) -> str:
    return "INSERT INTO moesif_intake VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * segment_count)


def insert_group(conn: sqlite3.Connection, rows: Sequence[EventRow], app: Optional[int], cap: int) -> bool:
    """INSERT `rows` (in order, as segments) in one autocommit statement when all
    of them fit under `cap` (`prepare_group_insert` first). False when they do
    not, or are too many segments for one statement: nothing was written, and
    the caller takes the careful path. Raises what SQLite raises (nothing written)."""
    parts = segments(rows, app)
    if len(parts) > _MAX_GROUP_SEGMENTS:
        return False
    params: List[object] = []
    for part in parts:
        params += part
        params.append(cap)
    try:
        conn.execute(_group_sql(len(parts)), params)
    except sqlite3.IntegrityError as exc:
        if str(exc) == _OVER_CAP:
            return False
        raise
    return True


def insert_events(conn: sqlite3.Connection, rows: Sequence[EventRow], app: Optional[int]) -> None:
    """INSERT `rows` in order, tagged with `app`, as segments."""
    if rows:
        insert_segments(conn, segments(rows, app))


def pending_events(conn: sqlite3.Connection) -> int:
    """Events in the queue now, from the counter the triggers keep exact."""
    return int(conn.execute("SELECT value FROM counters WHERE name = 'pending'").fetchone()[0])


def app_number(conn: sqlite3.Connection, application_id: Optional[str]) -> Optional[int]:
    """apps.id of `application_id` in this file, added on first use (None: no app given)."""
    if not application_id:
        return None
    row = conn.execute("SELECT id FROM apps WHERE application_id = ?", (application_id,)).fetchone()
    if row is None:
        with immediate(conn):
            conn.execute("INSERT OR IGNORE INTO apps (application_id) VALUES (?)", (application_id,))
        row = conn.execute("SELECT id FROM apps WHERE application_id = ?", (application_id,)).fetchone()
    return int(row[0])


_COUNT_PROBLEM = (
    "INSERT INTO problem_counts (reason, count, last_at) VALUES (?, ?, ?) "
    "ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count, last_at = excluded.last_at"
)


def add_counts(conn: sqlite3.Connection, drops: int, per_reason: Dict[str, int], *,
               counter: str = "dropped") -> None:
    """Add `drops` to the durable counter `counter` (dropped, profiles_dropped)
    and each reason's count to problem_counts."""
    if drops:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (drops, counter))
    if per_reason:
        now = time.time()
        conn.executemany(_COUNT_PROBLEM, [(reason, count, now) for reason, count in per_reason.items()])


def insert_profiles(conn: sqlite3.Connection, rows: Sequence[ProfileRow], cap: int) -> int:
    """INSERT `rows` while fewer than `cap` profiles are pending; the rest are
    counted as dropped. Returns how many were kept."""
    pending = conn.execute("SELECT value FROM counters WHERE name = 'profiles_pending'").fetchone()[0]
    kept = rows[:max(0, cap - pending)]
    conn.executemany("INSERT INTO profiles (kind, profile_id, created_at, body) VALUES (?, ?, ?, ?)", kept)
    add_counts(conn, len(rows) - len(kept), {}, counter="profiles_dropped")
    return len(kept)
