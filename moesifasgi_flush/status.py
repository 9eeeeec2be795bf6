"""What `moesif-flush status` reports: one dict built from the queue file."""
from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Dict, Optional

from moesifasgi import storage

from .profile_delivery import profile_counts

from . import queue_store as qs
from .lease import current_leader


def _file_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total


def _parse(value: Optional[str]) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def queue_status(conn: sqlite3.Connection, path: str, now: Optional[float] = None) -> Dict[str, Any]:
    """Counts, leader and last outcomes; `queue_file_bytes` counts the WAL too."""
    now = time.time() if now is None else now
    counts = qs.counters(conn)
    leader = current_leader(conn, now=now)
    in_flight, age = qs.scan_stats(conn, now)
    return {
        "queue_path": path,
        "pending": counts.get("pending", 0),
        "in_flight": in_flight,
        "dead_letters": qs.dead_letter_count(conn),
        "dropped": counts.get("dropped", 0),
        # Per reason: events recorded without a field (a callback raised or timed
        # out), minimal events (MASK_EVENT_MODEL failed), and drops ("drop:...").
        "problems": qs.problem_counts(conn),
        "sent": counts.get("sent", 0),
        "dead_lettered": counts.get("dead_lettered", 0),
        "oldest_pending_age_s": None if age is None else round(age, 3),
        "leader": None if leader is None else {
            "pid": leader["pid"], "host": leader["host"], "since": leader["since"], "owner": leader["owner"],
            "expires_at": leader["expires_at"]},
        "last_success_at": _parse(qs.kv_get(conn, qs.KV_LAST_SUCCESS)),
        "last_error": _parse(qs.kv_get(conn, qs.KV_LAST_ERROR)),
        "queue_file_bytes": _file_bytes(path),
        "schema_version": storage.schema_version(conn),
        "profiles": profile_counts(conn),
        "application_id": _stored_application_id(conn),
    }


def _stored_application_id(conn: sqlite3.Connection) -> Optional[str]:
    """The application id the file records, if this version of the queue records one."""
    try:
        value = qs.kv_get(conn, "application_id")
    except sqlite3.Error:
        return None
    return value


def newest_dead_letters(conn: sqlite3.Connection, since: float) -> tuple:
    """(dead letters that failed at or after `since`, the newest one's reason or None)."""
    count, = conn.execute("SELECT COUNT(*) FROM dead_letters WHERE failed_at >= ?", (since,)).fetchone()
    row = conn.execute("SELECT reason FROM dead_letters WHERE failed_at >= ? ORDER BY id DESC LIMIT 1",
                       (since,)).fetchone()
    return int(count), None if row is None else row[0]
