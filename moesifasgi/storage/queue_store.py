"""The flusher's operations on the shared queue file: claim, ack, release, dead-letter.

Plain synchronous functions over one `sqlite3.Connection` (autocommit, opened with
`moesifasgi.storage.connect`), so the CLI calls them directly and the flusher runs
them on its database thread (`async_db.AsyncDB`). Every write happens inside
`BEGIN IMMEDIATE` so that two processes never interleave a read-then-write.

A row is claimed by setting `claimed_by`/`claimed_until`; a claim hides the row from
every other drainer until it expires, which is how two drainers never post the same
event at once and how the rows of a crashed drainer come back. Rows are deleted only
after Moesif answered 2xx, and only while the claim is still ours.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from moesifasgi.storage import immediate
from moesifasgi.storage.claims import EVENTS, delete_sent, give_back, ids_json, move_to_dead_letters
from moesifasgi.storage.segments import (  # noqa: F401  (Row, StoredEvent, split_segment, stored_events: re-exported)
    SEGMENT_SQL, ROW_COLUMNS, Row, StoredEvent, cut, cut_row, row_from, segment_columns, split_segment, split_to_fit,
    stored_events,
)

# Moesif refuses batches over 50 MB whatever the compression; the brackets and
# commas of the joined array count too.
MAX_BATCH_BYTES = 50 * 1000 * 1000
# Moesif accepts events up to 30 days old.
MAX_EVENT_AGE_S = 30 * 24 * 3600.0

KV_CONFIG = "config"
KV_RULES = "rules"
KV_CONFIG_ETAG = "config_etag"
KV_LAST_SUCCESS = "last_success_at"
KV_LAST_ERROR = "last_error"


# The events claim in two plain statements instead of claims.claim_sql's window
# functions and RETURNING: read the oldest claimable rows of one app (a batch is
# posted under one application id; see migrations/0004), keep those within the
# event count and byte budget here, then mark exactly them by their id range
# (the other rows in that range are claimed already or another app's, which the
# UPDATE's filter excludes as the SELECT did). Rows are segments (0005): the
# cursor is read one row at a time and left as soon as the batch is full, so
# the LIMIT (in rows, each at least one event) reads no more than is kept.
_CLAIMABLE_SQL = (
    f"SELECT {ROW_COLUMNS} FROM events WHERE claimed_until < ?1 "
    "AND app IS (SELECT app FROM events WHERE claimed_until < ?1 ORDER BY id LIMIT 1) "
    "ORDER BY id LIMIT ?2"
)
_MARK_SQL = (
    "UPDATE events SET claimed_by = ?1, claimed_until = ?2, attempts = attempts + 1 "
    "WHERE id BETWEEN ?3 AND ?4 AND claimed_until < ?5 AND app IS ?6"
)


def claim(conn: sqlite3.Connection, owner: str, limit: int, claim_seconds: float, *,
          max_bytes: int = MAX_BATCH_BYTES, now: Optional[float] = None) -> List[Row]:
    """Claim up to `limit` unclaimed (or expired) events, oldest first, within `max_bytes`."""
    with immediate(conn):
        return _claim(conn, owner, limit, claim_seconds, max_bytes, now)


def ack_and_claim(conn: sqlite3.Connection, owner: str, ack_ids: Sequence[int], limit: int,
                  claim_seconds: float, *, max_bytes: int = MAX_BATCH_BYTES,
                  success_at: Optional[float] = None) -> Tuple[int, List[Row]]:
    """`ack` the batch just accepted and `claim` the next one in a single transaction.

    A worker does both back to back; one transaction and one thread hop instead
    of two is a measurable share of the drain rate. Returns (events acked, claimed rows).
    """
    with immediate(conn):
        acked = _ack(conn, owner, ack_ids, success_at) if ack_ids else 0
        return acked, _claim(conn, owner, limit, claim_seconds, max_bytes, None)


def _claim(conn: sqlite3.Connection, owner: str, limit: int, claim_seconds: float, max_bytes: int,
           now: Optional[float]) -> List[Row]:
    now = time.time() if now is None else now
    cursor = conn.execute(_CLAIMABLE_SQL, (now, limit))
    found: List[tuple] = []
    # The brackets and commas of the joined array count too. The first event is
    # always taken, so a single oversized event still moves (Moesif's 413 isolates it).
    events, total = 0, 1
    for row in cursor:
        events += row[5]
        total += row[7] + 1
        if found and (events > limit or total > max_bytes):
            break
        found.append(row)
        if events >= limit:
            break
    cursor.close()
    if not found:
        return []
    if len(found) == 1 and found[0][5] > 1 and (found[0][5] > limit or found[0][7] + 2 > max_bytes):
        # One segment larger than a batch (BATCH_SIZE below the writer's segment
        # size, or a small byte budget): cut it, once, into pieces that fit, and
        # take the first. The pieces keep the segment's place in the queue.
        found = [split_to_fit(conn, found[0], limit, max_bytes)]
    rows = [row_from(r) for r in found]
    conn.execute(_MARK_SQL, (owner, now + claim_seconds, rows[0].id, rows[-1].id, now, rows[0].app))
    return rows


def has_claimable(conn: sqlite3.Connection, now: Optional[float] = None) -> bool:
    """A cheap read-only look, so that an idle flusher does not take the write lock."""
    now = time.time() if now is None else now
    return conn.execute("SELECT 1 FROM events WHERE claimed_until < ? LIMIT 1", (now,)).fetchone() is not None


def ack(conn: sqlite3.Connection, owner: str, ids: Sequence[int], *,
        success_at: Optional[float] = None) -> int:
    """Delete events Moesif accepted (only those still claimed by `owner`); count them as sent."""
    with immediate(conn):
        return _ack(conn, owner, ids, success_at)


def _ack(conn: sqlite3.Connection, owner: str, ids: Sequence[int], success_at: Optional[float]) -> int:
    deleted = delete_sent(conn, EVENTS, owner, ids)
    if success_at is not None:
        _kv_upsert(conn, KV_LAST_SUCCESS, repr(success_at), success_at)
    return deleted


def release(conn: sqlite3.Connection, owner: str, ids: Optional[Sequence[int]] = None) -> int:
    """Give claimed events back to the queue (all of `owner`'s when `ids` is None)."""
    with immediate(conn):
        return give_back(conn, EVENTS, owner, ids)


def dead_letter(conn: sqlite3.Connection, owner: str, ids: Sequence[int], status: Optional[int],
                reason: str, *, now: Optional[float] = None) -> int:
    """Move claimed events (rows of ours, segments included) to the dead-letter
    table with the status and reason, one dead letter per event; returns how many."""
    now = time.time() if now is None else now
    with immediate(conn):
        single = list(ids)
        for row_id in ids:
            found = conn.execute(SEGMENT_SQL, (row_id, owner)).fetchone()
            if found is not None and found[5] > 1:
                single.remove(row_id)
                single += [r[0] for r in cut_row(conn, found, [[b] for b in cut(found[3], found[6])])]
        # A dead letter holds the event's JSON text in its row, as before segments.
        conn.execute("UPDATE events SET body = (SELECT CAST(body AS TEXT) FROM event_bodies WHERE "
                     "event_bodies.id = events.id) WHERE claimed_by = ? AND id IN (SELECT value FROM json_each(?)) "
                     "AND id IN (SELECT id FROM event_bodies)", (owner, ids_json(single)))
        return move_to_dead_letters(conn, EVENTS, owner, single, status, reason, now)


def _where_ids(ids: Optional[Sequence[int]]) -> tuple:
    if ids is None:
        return "", ()
    return " WHERE id IN (SELECT value FROM json_each(?))", (ids_json(ids),)


def requeue_dead_letters(conn: sqlite3.Connection, ids: Optional[Sequence[int]] = None) -> int:
    """Put dead letters (all, or those ids) back in the queue, keeping their transaction ids."""
    where, params = _where_ids(ids)
    # Rejected user/company profiles share the table; they go back to theirs
    # (profile_delivery.requeue_profile_dead_letters), never into events.
    where += (" AND" if where else " WHERE") + " kind = 'event'"
    with immediate(conn):
        moved = conn.execute(
            "INSERT INTO events (transaction_id, created_at, body, app) "
            f"SELECT transaction_id, created_at, body, app FROM dead_letters{where} ORDER BY id",
            params,
        ).rowcount
        conn.execute(f"DELETE FROM dead_letters{where}", params)
    return moved


def purge_dead_letters(conn: sqlite3.Connection, ids: Optional[Sequence[int]] = None) -> int:
    where, params = _where_ids(ids)
    with immediate(conn):
        return conn.execute(f"DELETE FROM dead_letters{where}", params).rowcount


_DEAD_LETTER_KEYS = ("id", "kind", "transaction_id", "created_at", "status", "reason", "failed_at", "body_chars")


def list_dead_letters(conn: sqlite3.Connection, limit: int = 50, *, offset: int = 0,
                      reason: Optional[str] = None) -> List[Dict[str, Any]]:
    """Dead letters in id order, a page at a time; `reason` keeps those whose reason
    (or status) contains it, case-insensitively."""
    where = ""
    params: List[Any] = []
    if reason:
        where = " WHERE instr(lower(reason || ' ' || COALESCE(status, '')), lower(?)) > 0"
        params.append(reason)
    cur = conn.execute(
        "SELECT id, kind, transaction_id, created_at, status, reason, failed_at, length(body) "
        f"FROM dead_letters{where} ORDER BY id LIMIT ? OFFSET ?", (*params, limit, offset))
    return [dict(zip(_DEAD_LETTER_KEYS, row)) for row in cur.fetchall()]


def get_dead_letter(conn: sqlite3.Connection, dead_letter_id: int) -> Optional[Dict[str, Any]]:
    """One dead letter with its stored body (parsed when it is JSON), or None."""
    row = conn.execute(
        "SELECT id, kind, transaction_id, created_at, status, reason, failed_at, length(body), body "
        "FROM dead_letters WHERE id = ?", (dead_letter_id,)).fetchone()
    if row is None:
        return None
    found = dict(zip(_DEAD_LETTER_KEYS, row[:-1]))
    try:
        found["body"] = json.loads(row[-1])
    except ValueError:
        found["body"] = row[-1]
    return found


def missing_dead_letter_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> List[int]:
    """Those of `ids` that name no dead letter."""
    present = {i for (i,) in conn.execute(
        "SELECT id FROM dead_letters WHERE id IN (SELECT value FROM json_each(?))", (ids_json(ids),))}
    return [i for i in ids if i not in present]


def peek(conn: sqlite3.Connection, n: int = 10, now: Optional[float] = None) -> List[Dict[str, Any]]:
    """The next `n` events in queue order, with their parsed JSON."""
    now = time.time() if now is None else now
    result = []
    for stored in stored_events(conn, n):
        try:
            event: Any = json.loads(stored.body)
        except ValueError:
            event = stored.body
        result.append({"id": stored.row_id, "transaction_id": stored.transaction_id, "created_at": stored.created_at,
                       "attempts": stored.attempts, "in_flight": stored.claimed_until >= now, "event": event})
    return result


def counters(conn: sqlite3.Connection) -> Dict[str, int]:
    return {name: int(value) for name, value in conn.execute("SELECT name, value FROM counters")}


def problem_counts(conn: sqlite3.Connection) -> Dict[str, int]:
    """What went wrong while recording, per reason (callback-raised:IDENTIFY_USER,
    mask-failed, drop:queue-full...); empty for a file older than the table."""
    try:
        rows = conn.execute("SELECT reason, count FROM problem_counts ORDER BY reason").fetchall()
    except sqlite3.OperationalError:  # schema before 3, opened read-only by status
        return {}
    return {reason: int(count) for reason, count in rows}


def pending(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM counters WHERE name = 'pending'").fetchone()
    return int(row[0]) if row else 0


def scan_stats(conn: sqlite3.Connection, now: Optional[float] = None) -> Tuple[int, Optional[float]]:
    """(events claimed right now, age in seconds of the oldest pending event).

    One full scan: there is no index on claimed_until or created_at (either would
    slow every insert of the web workers), which is fine for `status`, not for a
    hot loop. Requeued dead letters keep their old created_at, so the lowest id
    is not necessarily the oldest event.
    """
    now = time.time() if now is None else now
    count = segment_columns(conn).split(",")[0]  # no body read: a scan of the small rows
    claimed, oldest = conn.execute(
        f"SELECT COALESCE(SUM((claimed_until >= ?) * {count}), 0), MIN(created_at) FROM events", (now,)).fetchone()
    return int(claimed), None if oldest is None else max(0.0, now - oldest)


def application_ids(conn: sqlite3.Connection) -> Dict[int, str]:
    """apps.id -> application id, for posting each batch under its own app."""
    return {int(n): app for n, app in conn.execute("SELECT id, application_id FROM apps")}


def dead_letter_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])


def newest_dead_letters(conn: sqlite3.Connection, since: float) -> Tuple[int, Optional[str]]:
    """(dead letters that failed at or after `since`, the newest one's reason or None)."""
    count, = conn.execute("SELECT COUNT(*) FROM dead_letters WHERE failed_at >= ?", (since,)).fetchone()
    row = conn.execute("SELECT reason FROM dead_letters WHERE failed_at >= ? ORDER BY id DESC LIMIT 1",
                       (since,)).fetchone()
    return int(count), None if row is None else row[0]


# -- kv ---------------------------------------------------------------------------

def _kv_upsert(conn: sqlite3.Connection, key: str, value: str, now: float) -> None:
    # Workers notice a new config by its updated_at: it moves only when the value
    # changes, and always forward even if two writes share a clock tick.
    conn.execute(
        "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
        "updated_at = max(excluded.updated_at, kv.updated_at + 0.000001) "
        "WHERE kv.value IS NOT excluded.value",
        (key, value, now),
    )


def kv_set(conn: sqlite3.Connection, key: str, value: str, *, now: Optional[float] = None) -> None:
    with immediate(conn):
        _kv_upsert(conn, key, value, time.time() if now is None else now)


def kv_set_many(conn: sqlite3.Connection, items: Dict[str, str], *, now: Optional[float] = None) -> None:
    now = time.time() if now is None else now
    with immediate(conn):
        for key, value in items.items():
            _kv_upsert(conn, key, value, now)


def kv_get(conn: sqlite3.Connection, key: str) -> Optional[str]:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def kv_get_many(conn: sqlite3.Connection, keys: Sequence[str]) -> List[Tuple[str, str, float]]:
    """(key, value, updated_at) of those of `keys` that are stored."""
    return conn.execute("SELECT key, value, updated_at FROM kv WHERE key IN (SELECT value FROM json_each(?))",
                        (json.dumps(list(keys)),)).fetchall()


def kv_get_with_time(conn: sqlite3.Connection, key: str) -> Optional[tuple]:
    row = conn.execute("SELECT value, updated_at FROM kv WHERE key = ?", (key,)).fetchone()
    return None if row is None else (row[0], row[1])
