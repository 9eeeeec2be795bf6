"""The statements on the `leases` table: one row per lease name, held by whoever
has an unexpired row. The policy (who may take it, for how long) is the caller's
(`moesifasgi.delivery.lease`); this module only reads and writes the row."""
from __future__ import annotations

import sqlite3
from typing import Any, Dict, Optional, Tuple

from . import immediate

_HOLDER = "SELECT owner, expires_at FROM leases WHERE name = ?"


def lease_holder(conn: sqlite3.Connection, name: str) -> Optional[Tuple[str, float]]:
    """(owner, expires_at) of the row for `name`, expired or not; None when there is none.
    Read without the write lock: a contender's cheap look before trying."""
    row = conn.execute(_HOLDER, (name,)).fetchone()
    return None if row is None else (row[0], row[1])


def take_lease(conn: sqlite3.Connection, name: str, owner: str, pid: int, host: str, now: float,
               expires: float) -> Tuple[bool, Optional[str]]:
    """In one write transaction, take the lease `name` if it is free, expired or
    already `owner`'s (then only extended to `expires`).

    Returns (held, previous owner whose expired lease was taken over, or None).
    """
    with immediate(conn):
        row = conn.execute(_HOLDER, (name,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO leases (name, owner, pid, host, since, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                         (name, owner, pid, host, now, expires))
            return True, None
        held_by, expires_at = row
        if held_by == owner:
            conn.execute("UPDATE leases SET expires_at = ? WHERE name = ?", (expires, name))
            return True, None
        if expires_at >= now:
            return False, None
        conn.execute("UPDATE leases SET owner = ?, pid = ?, host = ?, since = ?, expires_at = ? WHERE name = ?",
                     (owner, pid, host, now, expires, name))
        return True, held_by


def extend_lease(conn: sqlite3.Connection, name: str, owner: str, expires: float) -> bool:
    """Move `owner`'s lease to `expires`; False when `owner` no longer holds it."""
    with immediate(conn):
        cur = conn.execute("UPDATE leases SET expires_at = ? WHERE name = ? AND owner = ?", (expires, name, owner))
    return cur.rowcount == 1


def drop_lease(conn: sqlite3.Connection, name: str, owner: str) -> bool:
    """Delete `owner`'s lease row; False when `owner` did not hold it."""
    with immediate(conn):
        cur = conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))
    return cur.rowcount == 1


def unexpired_lease(conn: sqlite3.Connection, name: str, now: float) -> Optional[Dict[str, Any]]:
    """{owner, pid, host, since, expires_at} of the lease `name` if it has not expired at `now`."""
    row = conn.execute("SELECT owner, pid, host, since, expires_at FROM leases WHERE name = ? AND expires_at >= ?",
                       (name, now)).fetchone()
    if row is None:
        return None
    return dict(zip(("owner", "pid", "host", "since", "expires_at"), row))
