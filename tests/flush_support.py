"""Helpers shared by the flusher tests: queue files with events, fast timings."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from typing import Callable, List, Optional

from moesifasgi import storage
from moesifasgi.storage import intake
from moesifasgi_flush.flusher import FlusherOptions

APP_ID = "test-app-id"

# Everything that waits in production (leases, backoff, probes) shortened so the
# whole suite stays fast; the logic under test is the same. Partial batches go out
# at once (batch_wait 0); tests/test_batch_wait.py covers the waiting.
FAST = FlusherOptions(batch_size=10, concurrency=4, lease_seconds=2.0, renew_interval=0.3, idle_poll=0.02,
                      backoff_initial=0.05, backoff_max=0.2, auth_probe_interval=0.5, shutdown_grace=2.0,
                      config_min_gap=0.1, batch_wait=0.0)


def event_json(tid: str, **extra: object) -> str:
    event = {"request": {"time": "2026-11-24T00:24:01.412", "uri": "http://localhost/items?id=1", "verb": "GET",
                         "headers": {"host": "localhost"}},
             "response": {"time": "2026-11-24T00:24:01.415", "status": 200, "headers": {}},
             "direction": "Incoming", "weight": 1, "transaction_id": tid}
    event.update(extra)
    return json.dumps(event)


def insert_events(path: str, count: int, *, prefix: Optional[str] = None, created_at: Optional[float] = None,
                  body: Optional[Callable[[str], str]] = None, per_event_rows: bool = False) -> List[str]:
    """Insert `count` events straight into the queue file (one group, stored as the
    writers store it; `per_event_rows`: one row each, as before segments); returns
    their transaction ids."""
    prefix = prefix if prefix is not None else uuid.uuid4().hex[:8]
    tids = [f"{prefix}-{i:06d}" for i in range(count)]
    at = time.time() if created_at is None else created_at
    conn = storage.connect(path)
    with storage.immediate(conn):
        if per_event_rows:  # as files written before segments (migration 0005) hold them
            conn.executemany("INSERT INTO events (transaction_id, created_at, body) VALUES (?, ?, ?)",
                             [(t, at, (body or event_json)(t)) for t in tids])
        else:  # as the writers store them: segments of up to intake.SEGMENT_EVENTS
            intake.insert_events(conn, [(t, at, (body or event_json)(t)) for t in tids], None)
    conn.close()
    return tids


def stored_events(path: str) -> list:
    """Every event queued in the file at `path`, one by one in queue order (rows
    are segments of several events since migration 0005): `queue_store.StoredEvent`s."""
    from moesifasgi.storage import queue_store

    conn = storage.connect(path)
    try:
        return list(queue_store.stored_events(conn))
    finally:
        conn.close()


def query(path: str, sql: str, *params: object) -> list:
    conn = storage.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# How long a test waits for something that should happen: long enough for a slow
# CI machine shared with other work, and free when all is well, since every wait
# ends as soon as its condition holds.
PATIENCE = 60.0


def wait_until(predicate: Callable[[], object], timeout: float = PATIENCE, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` s passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def cli_process(*args: str, queue: str, base_uri: str, **popen: object) -> subprocess.Popen:
    """`moesif-flush ARGS` as a real process (the same interpreter and package)."""
    env = dict(os.environ, MOESIF_QUEUE_PATH=queue, MOESIF_APPLICATION_ID=APP_ID, MOESIF_BASE_URI=base_uri)
    return subprocess.Popen([sys.executable, "-m", "moesifasgi_flush.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], object], timeout: float = PATIENCE, interval: float = 0.02) -> bool:
    """wait_until for async tests: sleeps on the loop so the flusher under test keeps running."""
    import asyncio
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


def damage_page_holding(path: str, marker: bytes) -> None:
    """Overwrite the database page that stores `marker` with garbage."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:
        data = f.read()
        page = data.index(marker) // page_size
        f.seek(page * page_size)
        f.write(os.urandom(page_size))
