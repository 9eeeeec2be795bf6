"""Giving disk space back after a large backlog drained.

Delivered events leave free pages inside the file; without compaction a queue
that once held a day's outage keeps its size for ever. Files created by this
version use `auto_vacuum = INCREMENTAL`, and the flusher frees pages in small
steps (`COMPACT_STEP_PAGES` per transaction, each a short write lock, with
pauses between them for the web workers' writers). A file from an older
version is switched over with one VACUUM, done only when the queue is nearly
empty so that the exclusive lock it takes lasts a moment.
"""
from __future__ import annotations

import sqlite3
from typing import Dict

# Compact only when at least this much is free inside the file, and it is a
# quarter of the file or more.
COMPACT_MIN_BYTES = 8 * 1024 * 1024
COMPACT_STEP_PAGES = 256  # 1 MB with 4 KB pages
# A legacy file is VACUUMed (rewritten) only with fewer pending rows than this.
VACUUM_MAX_PENDING = 1000

AUTO_VACUUM_INCREMENTAL = 2


def space_stats(conn: sqlite3.Connection) -> Dict[str, int]:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return {
        "page_size": page_size,
        "pages": conn.execute("PRAGMA page_count").fetchone()[0],
        "free_pages": conn.execute("PRAGMA freelist_count").fetchone()[0],
        "auto_vacuum": conn.execute("PRAGMA auto_vacuum").fetchone()[0],
    }


def worth_compacting(conn: sqlite3.Connection) -> bool:
    s = space_stats(conn)
    free = s["free_pages"] * s["page_size"]
    return free >= COMPACT_MIN_BYTES and s["free_pages"] * 4 >= s["pages"]


def compact_step(conn: sqlite3.Connection) -> int:
    """Free up to COMPACT_STEP_PAGES pages in one short transaction; the pages freed
    (0 when there is nothing worth doing). Call again, with a pause, until 0."""
    s = space_stats(conn)
    if s["free_pages"] == 0:
        return 0
    if s["auto_vacuum"] == AUTO_VACUUM_INCREMENTAL:
        # executescript steps the pragma to the end; execute() would free one page.
        conn.executescript(f"PRAGMA incremental_vacuum({COMPACT_STEP_PAGES});")
    else:
        pending = conn.execute("SELECT value FROM counters WHERE name = 'pending'").fetchone()
        if pending is None or pending[0] > VACUUM_MAX_PENDING:
            return 0
        # Switches an older file to incremental mode for good, and compacts it.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    freed = s["free_pages"] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    if freed > 0 and conn.execute("PRAGMA freelist_count").fetchone()[0] == 0:
        # The file is only truncated on disk once the WAL is checkpointed.
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return max(0, freed)
