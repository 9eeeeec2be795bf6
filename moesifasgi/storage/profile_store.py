"""The statements on the `profiles` table: claim, ack, release, dead-letter, requeue, counts.

Profiles are queued and claimed like events (see queue_store.py): a claim marks
the oldest unclaimed rows of one kind as ours until a deadline, rows are deleted
only after Moesif accepted them, and a profile Moesif rejects alone goes to the
shared dead-letter table with `kind` 'user' or 'company'.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from . import immediate
from .claims import PROFILES, claim_sql, delete_sent, give_back, ids_json, move_to_dead_letters

# moesifapi documents the profile batch endpoints as taking less than 250 kB.
MAX_PROFILE_BATCH_BYTES = 250_000
REJECTED_REASON = "profile rejected"


class ProfileRow(NamedTuple):
    id: int
    kind: str
    profile_id: str
    body: str



_CLAIM_SQL = claim_sql("profiles", "id, kind, profile_id, body", extra_filter="kind = ? AND ")
_IDS = "id IN (SELECT value FROM json_each(?))"


def claim_profiles(conn: sqlite3.Connection, kind: str, owner: str, limit: int, claim_seconds: float, *,
                   max_bytes: int = MAX_PROFILE_BATCH_BYTES, now: Optional[float] = None) -> List[ProfileRow]:
    """Claim up to `limit` unclaimed profiles of one kind, oldest first, within `max_bytes`."""
    now = time.time() if now is None else now
    with immediate(conn):
        rows = conn.execute(_CLAIM_SQL, (owner, now + claim_seconds, kind, now, limit, max_bytes - 1)).fetchall()
    return [ProfileRow(*r) for r in sorted(rows)]


def has_claimable_profiles(conn: sqlite3.Connection, now: Optional[float] = None) -> bool:
    now = time.time() if now is None else now
    return conn.execute("SELECT 1 FROM profiles WHERE claimed_until < ? LIMIT 1", (now,)).fetchone() is not None


def ack_profiles(conn: sqlite3.Connection, owner: str, ids: Sequence[int]) -> int:
    with immediate(conn):
        return delete_sent(conn, PROFILES, owner, ids)


def release_profiles(conn: sqlite3.Connection, owner: str, ids: Optional[Sequence[int]] = None) -> int:
    """Give claimed profiles back (all of `owner`'s when `ids` is None)."""
    with immediate(conn):
        return give_back(conn, PROFILES, owner, ids)


def dead_letter_profiles(conn: sqlite3.Connection, owner: str, ids: Sequence[int], status: Optional[int],
                         reason: str = REJECTED_REASON, *, now: Optional[float] = None) -> int:
    now = time.time() if now is None else now
    with immediate(conn):
        return move_to_dead_letters(conn, PROFILES, owner, ids, status, reason, now)


def requeue_profile_dead_letters(conn: sqlite3.Connection, ids: Optional[Sequence[int]] = None) -> int:
    """Put dead-lettered profiles (all, or those dead-letter ids) back in the profiles queue."""
    where = "kind IN ('user', 'company')" + ("" if ids is None else f" AND {_IDS}")
    params: Tuple[Any, ...] = () if ids is None else (ids_json(ids),)
    with immediate(conn):
        moved = conn.execute(
            "INSERT INTO profiles (kind, profile_id, created_at, body) "
            "SELECT kind, substr(transaction_id, length(kind) + 2), created_at, body "
            f"FROM dead_letters WHERE {where} ORDER BY id", params).rowcount
        conn.execute(f"DELETE FROM dead_letters WHERE {where}", params)
    return moved


def profile_counts(conn: sqlite3.Connection) -> Dict[str, int]:
    """For `moesif-flush status`: the profile counters, and dead letters by kind."""
    counts = {name: int(value) for name, value in conn.execute(
        "SELECT name, value FROM counters WHERE name LIKE 'profiles_%'")}
    counts["profile_dead_letters"] = int(conn.execute(
        "SELECT COUNT(*) FROM dead_letters WHERE kind IN ('user', 'company')").fetchone()[0])
    return counts
