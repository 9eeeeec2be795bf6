"""Recovering what a corrupt queue file still holds.

A file found corrupt is moved aside as `<queue>.corrupt-<time>-<pid>` (see
`storage.quarantine`) and a fresh queue takes its place at once. The rows of
the moved file that can still be read are copied into the live queue here,
segment by segment (each event keeps its transaction id) (Moesif drops a copy of an event it
already has), by the flusher on its own (`salvage_moved_files`) or by
`moesif-flush salvage FILE`. A salvaged file is renamed `...salvaged` and kept
for inspection, never deleted.

Damage is skipped rather than fatal: rows are read in id ranges, and a range
that fails is halved until the unreadable rows are isolated.
"""
from __future__ import annotations

import glob
import logging
import os
import pathlib
import sqlite3
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from . import immediate, intake

logger = logging.getLogger(__name__)

SALVAGED_SUFFIX = ".salvaged"
_CHUNK = 500
# Counters that record history rather than what the tables hold (pending is
# kept by triggers as rows are copied).
_HISTORY_COUNTERS = ("dropped", "sent", "dead_lettered", "profiles_dropped", "profiles_sent",
                     "profiles_dead_lettered")


@dataclass
class Salvaged:
    events: int = 0
    profiles: int = 0
    dead_letters: int = 0
    unreadable: int = 0  # ids (or id ranges) that could not be read


def moved_files(queue_path: str) -> List[str]:
    """Corrupt files moved aside from `queue_path` and not salvaged yet, oldest first."""
    found = []
    for name in glob.glob(glob.escape(queue_path) + ".corrupt-*"):
        if name.endswith(("-wal", "-shm", SALVAGED_SUFFIX)) or ".salvaged-" in name:
            continue
        found.append(name)
    return sorted(found)


def _columns(conn: sqlite3.Connection, table: str) -> List[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _id_bounds(conn: sqlite3.Connection, table: str) -> Optional[Tuple[int, int]]:
    try:
        low, high = conn.execute(f"SELECT min(id), max(id) FROM {table}").fetchone()
        if low is not None:
            return int(low), int(high)
        return None
    except sqlite3.DatabaseError:
        pass
    try:  # the b-tree ends are damaged: AUTOINCREMENT remembers the last id
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return (1, int(row[0])) if row else None


def _readable(conn: sqlite3.Connection, table: str, columns: List[str], out: Salvaged) -> Iterator[tuple]:
    bounds = _id_bounds(conn, table)
    if bounds is None:
        return
    sql = f"SELECT {', '.join(columns)} FROM {table} WHERE id BETWEEN ? AND ? ORDER BY id"
    low, high = bounds
    for start in range(low, high + 1, _CHUNK):
        stack = [(start, min(high, start + _CHUNK - 1))]
        while stack:
            a, b = stack.pop()
            try:
                rows = conn.execute(sql, (a, b)).fetchall()
            except sqlite3.DatabaseError:
                if a == b:
                    out.unreadable += 1
                    continue
                middle = (a + b) // 2
                stack += [(middle + 1, b), (a, middle)]
                continue
            yield from rows


def _apps(source: sqlite3.Connection) -> Dict[int, str]:
    try:
        return {int(n): app for n, app in source.execute("SELECT id, application_id FROM apps")}
    except sqlite3.DatabaseError:
        return {}


def _app_in(target: sqlite3.Connection, application_id: Optional[str]) -> Optional[int]:
    if application_id is None:
        return None
    target.execute("INSERT OR IGNORE INTO apps (application_id) VALUES (?)", (application_id,))
    return int(target.execute("SELECT id FROM apps WHERE application_id = ?", (application_id,)).fetchone()[0])


def salvage(moved_path: str, target: sqlite3.Connection) -> Salvaged:
    """Copy the readable events, profiles and dead letters of `moved_path` into `target`."""
    out = Salvaged()
    uri = pathlib.Path(os.path.abspath(moved_path)).as_uri() + "?mode=ro"
    try:
        source = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error:
        return out
    try:
        try:
            tables = {name for (name,) in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError:
            return out  # not even the schema can be read
        apps = _apps(source)
        app_map: Dict[Optional[int], Optional[int]] = {None: None}
        with immediate(target):
            for n, application_id in apps.items():
                app_map[n] = _app_in(target, application_id)
        event_columns = _columns(source, "events") if "events" in tables else []
        has_app = "app" in event_columns
        # Segments (0005) are copied whole: a readable row is all its events.
        has_segments = "event_count" in event_columns
        body = "body"
        if "event_bodies" in tables:  # a segment's JSON is kept apart from its row (0005)
            body = "COALESCE((SELECT body FROM event_bodies WHERE event_bodies.id = events.id), events.body)"
        if "events" in tables:
            columns = ["transaction_id", "created_at", body, "app" if has_app else "NULL",
                       "event_count" if has_segments else "1", "lengths" if has_segments else "NULL"]
            batch: List[tuple] = []
            for row in _readable(source, "events", columns, out):
                batch.append((row[0], row[1], row[2], app_map.get(row[3]) if has_app else None, row[4], row[5]))
                if len(batch) >= _CHUNK:
                    out.events += _insert(target, "events", batch)
                    batch = []
            out.events += _insert(target, "events", batch)
        if "profiles" in tables:
            rows = [r for r in _readable(source, "profiles", ["kind", "profile_id", "created_at", "body"], out)]
            out.profiles += _insert(target, "profiles", rows)
        if "dead_letters" in tables:
            cols = _columns(source, "dead_letters")
            wanted = [c for c in ("transaction_id", "created_at", "body", "status", "reason", "failed_at", "kind")
                      if c in cols]
            rows = [r for r in _readable(source, "dead_letters", wanted, out)]
            if rows:
                with immediate(target):
                    target.executemany(f"INSERT INTO dead_letters ({', '.join(wanted)}) "
                                       f"VALUES ({', '.join('?' * len(wanted))})", rows)
                out.dead_letters = len(rows)
        _add_counters(source, target)
    finally:
        source.close()
    return out


def _insert(target: sqlite3.Connection, table: str, rows: List[tuple]) -> int:
    if not rows:
        return 0
    with immediate(target):
        if table == "events":
            intake.insert_segments(target, [(tid, created_at, body.encode("utf-8") if isinstance(body, str) else body,
                                             app, count, lengths) for tid, created_at, body, app, count, lengths in rows])
            return sum(row[4] for row in rows)  # events, not segments
        target.executemany("INSERT INTO profiles (kind, profile_id, created_at, body) VALUES (?, ?, ?, ?)", rows)
    return len(rows)


def _add_counters(source: sqlite3.Connection, target: sqlite3.Connection) -> None:
    try:
        counts = dict(source.execute("SELECT name, value FROM counters").fetchall())
    except sqlite3.DatabaseError:
        return
    with immediate(target):
        for name in _HISTORY_COUNTERS:
            if counts.get(name):
                target.execute("UPDATE counters SET value = value + ? WHERE name = ?", (int(counts[name]), name))


def mark_salvaged(moved_path: str) -> str:
    """Rename a salvaged file (and its -wal/-shm) so that it is not salvaged twice."""
    target = moved_path + SALVAGED_SUFFIX
    for suffix in ("-wal", "-shm", ""):
        try:
            os.rename(moved_path + suffix, target + suffix)
        except FileNotFoundError:
            pass
    return target


def salvage_moved_files(queue_path: str, target: sqlite3.Connection) -> List[Tuple[str, Salvaged]]:
    """Salvage every corrupt file moved aside from `queue_path` into `target` (the live queue)."""
    done = []
    for moved in moved_files(queue_path):
        result = salvage(moved, target)
        renamed = mark_salvaged(moved)
        logger.warning("moesifasgi: salvaged %d events, %d profiles and %d dead letters from the corrupt file "
                       "%s (%d unreadable rows skipped); it is kept as %s", result.events, result.profiles,
                       result.dead_letters, moved, result.unreadable, renamed)
        done.append((renamed, result))
    return done
