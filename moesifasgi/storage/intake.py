"""The writers' statements: events and profiles into the queue, and the counts
of what was dropped on the way.

Each function runs inside the caller's write transaction (`storage.immediate`),
except `app_number`, which takes its own when it must add a row: a writer
groups an insert with the counts that belong to it, so that one COMMIT makes
both durable, or neither.
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

# A group is written with one multi-row INSERT ... VALUES (split past 240 rows:
# 4 parameters a row stays under SQLite's oldest limit of 999 per statement).
# One statement, so that the GIL is released and taken back once per group:
# each re-take waits for the app's event loop to hand it over, and with a
# statement per row (executemany), or even a few per group, that wait stretched
# the commit under load, and with it what a kill -9 loses in batched mode (the
# fault-injection test saw 38 lost with five statements per group). Bound
# parameters rather than one JSON array unpacked by json_each: no escaping of
# each event's text into the array and parsing it back three times per row,
# which nearly doubled the CPU per row.
_MAX_ROWS_PER_STATEMENT = 240


@functools.lru_cache(maxsize=None)
def _insert_sql(rows: int) -> str:
    return "INSERT INTO events (transaction_id, created_at, body, app) VALUES " + ",".join(["(?,?,?,?)"] * rows)


def insert_events(conn: sqlite3.Connection, rows: Sequence[EventRow], app: Optional[int]) -> None:
    """INSERT `rows` in order, tagged with `app`: one statement per 240 rows."""
    for start in range(0, len(rows), _MAX_ROWS_PER_STATEMENT):
        chunk = rows[start:start + _MAX_ROWS_PER_STATEMENT]
        params: List[object] = []
        for transaction_id, created_at, body in chunk:
            params += (transaction_id, created_at, body, app)
        conn.execute(_insert_sql(len(chunk)), params)


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
