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
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from moesifasgi.storage import immediate
from moesifasgi.storage.claims import EVENTS, delete_sent, give_back, ids_json, move_to_dead_letters

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


class Row(NamedTuple):
    """One claimed events row: a segment of `count` events (one for rows written
    before migration 0005, or cut from a segment)."""
    id: int
    transaction_id: str  # the first event's
    created_at: float  # the oldest event's
    body: bytes  # the events' JSON texts joined by commas, UTF-8
    app: Optional[int] = None  # apps.id of the app that recorded it; None: the flusher's own
    count: int = 1
    lengths: Optional[str] = None  # the events' byte lengths, comma-separated (None: one event)

    def event_bodies(self) -> List[bytes]:
        """The JSON of each event of the segment, as stored."""
        return cut(self.body, self.lengths)


def cut(body: Union[bytes, str], lengths: Optional[str]) -> List[bytes]:
    """A segment's body cut into its events' JSON (bytes), by their stored lengths."""
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if not lengths:
        return [data]
    out, at = [], 0
    for length in map(int, lengths.split(",")):
        out.append(data[at:at + length])
        at += length + 1  # the comma
    return out


def _row(found: tuple) -> Row:
    body = found[3]
    return Row(found[0], found[1], found[2], body.encode("utf-8") if isinstance(body, str) else body,
               found[4], found[5], found[6])


# The events claim in two plain statements instead of claims.claim_sql's window
# functions and RETURNING: read the oldest claimable rows of one app (a batch is
# posted under one application id; see migrations/0004), keep those within the
# event count and byte budget here, then mark exactly them by their id range
# (the other rows in that range are claimed already or another app's, which the
# UPDATE's filter excludes as the SELECT did). Rows are segments (0005): the
# cursor is read one row at a time and left as soon as the batch is full, so
# the LIMIT (in rows, each at least one event) reads no more than is kept.
# A row's JSON: in event_bodies for a segment, in the row for one from before 0005.
_BODY = "COALESCE((SELECT body FROM event_bodies WHERE event_bodies.id = events.id), events.body)"
_ROW_COLUMNS = f"id, transaction_id, created_at, {_BODY}, app, event_count, lengths, length(CAST({_BODY} AS BLOB))"
_CLAIMABLE_SQL = (
    f"SELECT {_ROW_COLUMNS} FROM events WHERE claimed_until < ?1 "
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
        found = [_split_to_fit(conn, found[0], limit, max_bytes)]
    rows = [_row(r) for r in found]
    conn.execute(_MARK_SQL, (owner, now + claim_seconds, rows[0].id, rows[-1].id, now, rows[0].app))
    return rows


def _pieces(bodies: List[bytes], limit: int, max_bytes: int) -> List[List[bytes]]:
    pieces: List[List[bytes]] = [[]]
    size = 1
    for body in bodies:
        if pieces[-1] and (len(pieces[-1]) >= limit or size + len(body) + 1 > max_bytes):
            pieces.append([])
            size = 1
        pieces[-1].append(body)
        size += len(body) + 1
    return pieces


def _replace(conn: sqlite3.Connection, found: tuple, pieces: List[List[bytes]]) -> List[tuple]:
    """Cut the events row `found` (a _CLAIMABLE_SQL row) into one row per piece, in
    order: the first piece stays in the row (its id, its place in the queue), the
    others are new rows with its claim, attempts, app and creation time (after
    every row queued so far). `pending` is unchanged: the events move, none is
    added or removed. Returns the rows in _CLAIMABLE_SQL's shape."""
    row_id, first_tid, created_at = found[0], found[1], found[2]
    claimed_by, claimed_until, attempts, app = conn.execute(
        "SELECT claimed_by, claimed_until, attempts, app FROM events WHERE id = ?", (row_id,)).fetchone()
    out = []
    for piece in pieces:
        body = b",".join(piece)
        lengths = None if len(piece) == 1 else ",".join(str(len(b)) for b in piece)
        if not out:
            tid = first_tid
            conn.execute("UPDATE events SET body = '', event_count = ?, lengths = ? WHERE id = ?",
                         (len(piece), lengths, row_id))
            conn.execute("INSERT OR REPLACE INTO event_bodies (id, body) VALUES (?, ?)", (row_id, body))
            # No trigger on UPDATE: the rows inserted below add their events back.
            conn.execute("UPDATE counters SET value = value - ? WHERE name = 'pending'", (found[5] - len(piece),))
            new_id = row_id
        else:
            tid = _transaction_id(piece[0], first_tid)
            new_id = conn.execute(
                "INSERT INTO events (transaction_id, created_at, body, app, event_count, lengths, claimed_by, "
                "claimed_until, attempts) VALUES (?, ?, '', ?, ?, ?, ?, ?, ?)",
                (tid, created_at, app, len(piece), lengths, claimed_by, claimed_until, attempts)).lastrowid
            conn.execute("INSERT INTO event_bodies (id, body) VALUES (?, ?)", (new_id, body))
        out.append((new_id, tid, created_at, body, app, len(piece), lengths, len(body)))
    return out


def _split_to_fit(conn: sqlite3.Connection, found: tuple, limit: int, max_bytes: int) -> tuple:
    pieces = _pieces(cut(found[3], found[6]), limit, max_bytes)
    return _replace(conn, found, pieces)[0]


def _transaction_id(event: bytes, fallback: str) -> str:
    try:
        tid = json.loads(event).get("transaction_id")
    except (ValueError, AttributeError):
        return fallback
    return tid if isinstance(tid, str) else fallback


_SEGMENT_SQL = f"SELECT {_ROW_COLUMNS} FROM events WHERE id = ? AND claimed_by = ?"


def split_segment(conn: sqlite3.Connection, owner: str, row_id: int) -> List[Row]:
    """Cut a segment we hold claimed into one row per event (still claimed by us),
    for isolating the event Moesif refuses (400/413); see `_replace` for their ids.
    [] when the row is no longer ours; the row itself when it holds one event."""
    with immediate(conn):
        found = conn.execute(_SEGMENT_SQL, (row_id, owner)).fetchone()
        if found is None:
            return []
        if found[5] <= 1:
            return [_row(found)]
        return [_row(r) for r in _replace(conn, found, [[b] for b in cut(found[3], found[6])])]


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
            found = conn.execute(_SEGMENT_SQL, (row_id, owner)).fetchone()
            if found is not None and found[5] > 1:
                single.remove(row_id)
                single += [r[0] for r in _replace(conn, found, [[b] for b in cut(found[3], found[6])])]
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


def _segment_columns(conn: sqlite3.Connection) -> str:
    """The segment columns to select (event count, lengths, body): a file opened
    read-only may be older than migration 0005 (one event per row, in `body`)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    return f"event_count, lengths, {_BODY}" if "event_count" in columns else "1, NULL, body"


class StoredEvent(NamedTuple):
    row_id: int  # the events row (segment) that holds it
    transaction_id: str
    created_at: float  # the segment's
    body: str  # the event's JSON as stored
    app: Optional[int]
    attempts: int
    claimed_until: float


def stored_events(conn: sqlite3.Connection, limit: Optional[int] = None) -> Iterator[StoredEvent]:
    """The queued events one by one in queue order (segments cut into their events),
    at most `limit`. For `peek`, tests and tools; the flusher never cuts a segment
    it posts whole."""
    cur = conn.execute(f"SELECT id, transaction_id, created_at, app, attempts, claimed_until, "
                       f"{_segment_columns(conn)} FROM events ORDER BY id")
    given = 0
    for row_id, first_tid, created_at, app, attempts, claimed_until, count, lengths, body in cur:
        for index, event in enumerate(cut(body, lengths) if count > 1 else [body]):
            if limit is not None and given >= limit:
                cur.close()
                return
            text = event.decode("utf-8", "replace") if isinstance(event, bytes) else event
            tid = first_tid if index == 0 else _transaction_id(event, "")
            yield StoredEvent(row_id, tid, created_at, text, app, attempts, claimed_until)
            given += 1


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
    count = _segment_columns(conn).split(",")[0]  # no body read: a scan of the small rows
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
