from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Dict, List

import pytest

from moesifasgi import storage, writers
from moesifasgi.diagnostics import problems
from tests._compat import accept_content_on_old_testclients


# Tests that do not test the flusher keep their apps write-only, and nothing may
# ever try to reach the real Moesif: the default collector is a dead loopback port.
os.environ.setdefault("MOESIF_FLUSHER", "external")
os.environ.setdefault("MOESIF_BASE_URI", "http://127.0.0.1:9")

accept_content_on_old_testclients()


@pytest.fixture
def queue_path(tmp_path) -> str:
    return str(tmp_path / "queue.sqlite")


@pytest.fixture
def path(tmp_path) -> str:
    """A queue file that already exists with the current schema."""
    p = str(tmp_path / "queue.sqlite")
    storage.connect(p).close()
    return p


@pytest.fixture
def collector():
    """A loopback Moesif stand-in that expects the tests' application id."""
    from moesifasgi.testing.local_collector import LocalCollector
    from tests.flush_support import APP_ID

    with LocalCollector(application_id=APP_ID) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_process_state():
    problems.reset()
    yield
    writers.close_all()
    problems.reset()


def read_events(path: str) -> List[Dict[str, Any]]:
    """Every event committed to the queue at `path`, oldest first (after flushing writers)."""
    from moesifasgi.storage import queue_store

    writers.flush_all()
    conn = sqlite3.connect(path)
    try:
        return [json.loads(event.body) for event in queue_store.stored_events(conn)]
    finally:
        conn.close()


def read_counter(path: str, name: str) -> int:
    writers.flush_all()
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]
    finally:
        conn.close()


def read_problems(path: str) -> Dict[str, int]:
    """The per-reason problem counts of the queue at `path` (after flushing writers)."""
    writers.flush_all()
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT reason, count FROM problem_counts"))
    finally:
        conn.close()


def pytest_addoption(parser) -> None:
    parser.addoption("--matrix", action="store_true", default=False,
                     help="run the whole framework and server matrix (tests/test_server_matrix.py)")


def pytest_collection_modifyitems(config, items) -> None:
    # The whole matrix takes minutes and extra packages: only its fast subset
    # runs unless --matrix is given.
    if config.getoption("--matrix"):
        return
    kept = [item for item in items if item.get_closest_marker("matrix") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("matrix")])
        items[:] = kept
