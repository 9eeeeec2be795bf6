"""What `moesif-flush status` reports: one dict built from the queue file."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from typing import Any, Dict, List, Optional

from moesifasgi import storage
from moesifasgi.delivery.lease import current_leader, owner_is_dead
from moesifasgi.storage import queue_store as qs



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
            "expires_at": leader["expires_at"],
            # False: the pid is not running on this host (in this pid namespace): the
            # leader died and its lease has not expired yet, or it runs in another
            # container. None: another host, nothing to say.
            "running_here": None if leader["host"] != socket.gethostname() else not owner_is_dead(leader["owner"])},
        "last_success_at": _parse(qs.kv_get(conn, qs.KV_LAST_SUCCESS)),
        "last_error": _parse(qs.kv_get(conn, qs.KV_LAST_ERROR)),
        "queue_file_bytes": _file_bytes(path),
        "schema_version": storage.schema_version(conn),
        "profiles": _profile_counts(conn),
        "application_ids": _application_ids(conn),
    }


def _profile_counts(conn: sqlite3.Connection) -> Dict[str, int]:
    # Imported here: profile_delivery brings httpx and asyncio, which `status` and
    # `check` (run by probes every few seconds) do not otherwise need.
    from moesifasgi.delivery.profile_delivery import profile_counts
    return profile_counts(conn)


def _application_ids(conn: sqlite3.Connection) -> List[str]:
    """The application ids of the apps that wrote to this file (empty before schema 4)."""
    try:
        return sorted(qs.application_ids(conn).values())
    except sqlite3.OperationalError:  # an older schema, opened read-only
        return []

