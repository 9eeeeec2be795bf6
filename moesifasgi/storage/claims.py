"""One claim model for both queue tables (`events`, `profiles`): what happens to
claimed rows after a post, written once.

A drainer claims rows by setting `claimed_by`/`claimed_until` (see
`queue_store.claim_sql`); afterwards each row is either deleted and counted as
sent (Moesif accepted it), given back (a failed post, a stop), or moved to the
shared `dead_letters` table (Moesif refused it alone). Every statement touches
only rows still claimed by the caller: a row whose claim expired and was taken
by another drainer is that drainer's now.

These functions run inside the caller's write transaction (`storage.immediate`).
"""
from __future__ import annotations

import json
import sqlite3
from typing import Iterable, NamedTuple, Optional, Sequence

_IDS = "id IN (SELECT value FROM json_each(?))"


class QueueTable(NamedTuple):
    name: str
    sent_counter: str
    dead_lettered_counter: str
    # What a dead letter keeps: its transaction_id, and the column that says whose
    # it is (an event's app; a profile's kind, 'user' or 'company').
    dead_letter_id: str
    dead_letter_tag: str
    # How many items a row holds: an events row is a segment of event_count
    # events (migration 0005); a profile row is one profile. Counters count items.
    items: str = "1"


EVENTS = QueueTable("events", "sent", "dead_lettered", "transaction_id", "app", "event_count")
PROFILES = QueueTable("profiles", "profiles_sent", "profiles_dead_lettered", "kind || ':' || profile_id", "kind")


def ids_json(ids: Iterable[int]) -> str:
    """Ids as one JSON array parameter, for `id IN (SELECT value FROM json_each(?))`:
    any number of ids in one bound value (no IN (?, ?, ...) limit)."""
    return json.dumps(list(ids))


def claim_sql(table: str, returning: str, extra_filter: str = "") -> str:
    """The claim statement of a queue table (events, profiles): mark the oldest
    unclaimed rows, up to a count and a byte budget, as ours until a deadline.

    Parameters, in order: owner, claimed_until, [the extra filter's], now,
    limit, max_bytes - 1. The running total needs the bytes of each body: CAST
    to BLOB gives the UTF-8 length where length() of TEXT counts characters.
    The first row is always taken, so a single oversized row still moves (and
    is isolated by Moesif's 413).
    """
    return f"""
UPDATE {table} SET claimed_by = ?, claimed_until = ?, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM (
        SELECT id,
               ROW_NUMBER() OVER (ORDER BY id) AS n,
               SUM(length(CAST(body AS BLOB)) + 1) OVER (ORDER BY id) AS running
        FROM (SELECT id, body FROM {table} WHERE {extra_filter}claimed_until < ? ORDER BY id LIMIT ?)
    ) WHERE n = 1 OR running <= ?
)
RETURNING {returning}
"""


def delete_sent(conn: sqlite3.Connection, table: QueueTable, owner: str, ids: Sequence[int]) -> int:
    """Delete rows Moesif accepted (only those still claimed by `owner`); count their
    items as sent and return that count."""
    deleted = _items(conn.execute(f"DELETE FROM {table.name} WHERE claimed_by = ? AND {_IDS} RETURNING {table.items}",
                                  (owner, ids_json(ids))))
    if deleted:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (deleted, table.sent_counter))
    return deleted


def give_back(conn: sqlite3.Connection, table: QueueTable, owner: str, ids: Optional[Sequence[int]] = None) -> int:
    """Unclaim rows (all of `owner`'s when `ids` is None) so that any drainer takes them
    at once; returns the items they hold."""
    sql = f"UPDATE {table.name} SET claimed_by = NULL, claimed_until = 0 WHERE claimed_by = ?"
    if ids is None:
        return _items(conn.execute(f"{sql} RETURNING {table.items}", (owner,)))
    return _items(conn.execute(f"{sql} AND {_IDS} RETURNING {table.items}", (owner, ids_json(ids))))


def _items(cursor: sqlite3.Cursor) -> int:
    return sum(count for (count,) in cursor)


def move_to_dead_letters(conn: sqlite3.Connection, table: QueueTable, owner: str, ids: Sequence[int],
                         status: Optional[int], reason: str, now: float) -> int:
    """Move claimed rows to the dead letters with the status and reason; count them.
    Each row must hold one item: the caller cuts an events segment first
    (`queue_store.dead_letter`), since a dead letter is one event."""
    id_list = ids_json(ids)
    moved = conn.execute(
        f"INSERT INTO dead_letters (transaction_id, created_at, body, status, reason, failed_at, "
        f"{table.dead_letter_tag}) SELECT {table.dead_letter_id}, created_at, body, ?, ?, ?, "
        f"{table.dead_letter_tag} FROM {table.name} WHERE claimed_by = ? AND {_IDS} ORDER BY id",
        (status, reason, now, owner, id_list)).rowcount
    conn.execute(f"DELETE FROM {table.name} WHERE claimed_by = ? AND {_IDS}", (owner, id_list))
    if moved:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (moved, table.dead_lettered_counter))
    return moved
