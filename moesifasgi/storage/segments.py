"""Segments (migration 0005): one `events` row holds a writer's group of events.

A segment's JSON is its events' texts joined by commas, as UTF-8, kept in
`event_bodies` under the row's id (a row from before 0005 holds one event in its
own `body`). Here: reading a row's events, and cutting a row into several, which
the flusher does only on a 400/413 (to isolate the event Moesif refuses), when a
segment is larger than a batch, and before dead-lettering (a dead letter is one
event). `queue_store` claims, acks and releases whole rows.

These functions run inside the caller's write transaction, except
`split_segment`, which takes its own.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Iterator, List, NamedTuple, Optional, Union

from . import immediate


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


def row_from(found: tuple) -> Row:
    """A Row from a ROW_COLUMNS row."""
    body = found[3]
    return Row(found[0], found[1], found[2], body.encode("utf-8") if isinstance(body, str) else body,
               found[4], found[5], found[6])


# A row's JSON: in event_bodies for a segment, in the row for one from before 0005.
BODY = "COALESCE((SELECT body FROM event_bodies WHERE event_bodies.id = events.id), events.body)"
# What the claim and the cutting read of a row, in this order (a "found" row).
ROW_COLUMNS = f"id, transaction_id, created_at, {BODY}, app, event_count, lengths, length(CAST({BODY} AS BLOB))"


def pieces_of(bodies: List[bytes], limit: int, max_bytes: int) -> List[List[bytes]]:
    """Events in order, grouped into pieces of at most `limit` events and `max_bytes`
    as a JSON array (a piece always takes at least one event)."""
    pieces: List[List[bytes]] = [[]]
    size = 1
    for body in bodies:
        if pieces[-1] and (len(pieces[-1]) >= limit or size + len(body) + 1 > max_bytes):
            pieces.append([])
            size = 1
        pieces[-1].append(body)
        size += len(body) + 1
    return pieces


def cut_row(conn: sqlite3.Connection, found: tuple, pieces: List[List[bytes]]) -> List[tuple]:
    """Cut the events row `found` (a ROW_COLUMNS row) into one row per piece, in
    order: the first piece stays in the row (its id, its place in the queue), the
    others are new rows with its claim, attempts, app and creation time (after
    every row queued so far). `pending` is unchanged: the events move, none is
    added or removed. Returns the rows in ROW_COLUMNS' shape."""
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
            tid = transaction_id_of(piece[0], first_tid)
            new_id = conn.execute(
                "INSERT INTO events (transaction_id, created_at, body, app, event_count, lengths, claimed_by, "
                "claimed_until, attempts) VALUES (?, ?, '', ?, ?, ?, ?, ?, ?)",
                (tid, created_at, app, len(piece), lengths, claimed_by, claimed_until, attempts)).lastrowid
            conn.execute("INSERT INTO event_bodies (id, body) VALUES (?, ?)", (new_id, body))
        out.append((new_id, tid, created_at, body, app, len(piece), lengths, len(body)))
    return out


def split_to_fit(conn: sqlite3.Connection, found: tuple, limit: int, max_bytes: int) -> tuple:
    pieces = pieces_of(cut(found[3], found[6]), limit, max_bytes)
    return cut_row(conn, found, pieces)[0]


def transaction_id_of(event: bytes, fallback: str) -> str:
    try:
        tid = json.loads(event).get("transaction_id")
    except (ValueError, AttributeError):
        return fallback
    return tid if isinstance(tid, str) else fallback


SEGMENT_SQL = f"SELECT {ROW_COLUMNS} FROM events WHERE id = ? AND claimed_by = ?"


def split_segment(conn: sqlite3.Connection, owner: str, row_id: int) -> List[Row]:
    """Cut a segment we hold claimed into one row per event (still claimed by us),
    for isolating the event Moesif refuses (400/413); see `cut_row` for their ids.
    [] when the row is no longer ours; the row itself when it holds one event."""
    with immediate(conn):
        found = conn.execute(SEGMENT_SQL, (row_id, owner)).fetchone()
        if found is None:
            return []
        if found[5] <= 1:
            return [row_from(found)]
        return [row_from(r) for r in cut_row(conn, found, [[b] for b in cut(found[3], found[6])])]


def segment_columns(conn: sqlite3.Connection) -> str:
    """The segment columns to select (event count, lengths, body): a file opened
    read-only may be older than migration 0005 (one event per row, in `body`)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    return f"event_count, lengths, {BODY}" if "event_count" in columns else "1, NULL, body"


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
                       f"{segment_columns(conn)} FROM events ORDER BY id")
    given = 0
    for row_id, first_tid, created_at, app, attempts, claimed_until, count, lengths, body in cur:
        for index, event in enumerate(cut(body, lengths) if count > 1 else [body]):
            if limit is not None and given >= limit:
                cur.close()
                return
            text = event.decode("utf-8", "replace") if isinstance(event, bytes) else event
            tid = first_tid if index == 0 else transaction_id_of(event, "")
            yield StoredEvent(row_id, tid, created_at, text, app, attempts, claimed_until)
            given += 1
