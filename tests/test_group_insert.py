"""The writer's usual group in one statement (intake.insert_group), and the careful
path it falls back to: over the cap, with counts to add, or with profiles."""
from __future__ import annotations

import sqlite3
import time
from typing import List

from moesifasgi import storage
from moesifasgi.queue_writer import QueueWriter
from moesifasgi.storage import intake
from tests.flush_support import event_json, query, stored_events


def _rows(count: int, prefix: str = "t") -> List[intake.EventRow]:
    return [(f"{prefix}-{i}", time.time(), event_json(f"{prefix}-{i}")) for i in range(count)]


def _counters(path: str) -> dict:
    return dict(query(path, "SELECT name, value FROM counters"))


def _traced(writer: QueueWriter) -> List[str]:
    """The statements the writer's connection runs from now on."""
    seen: List[str] = []
    writer._file.connection().set_trace_callback(seen.append)
    return seen


def test_a_group_that_fits_is_written_by_one_statement_and_counted(tmp_path):
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=1000, commit_interval=0.05)
    writer.submit(("first", time.time(), event_json("first")))
    assert writer.flush(60)  # the connection is open: trace it
    seen = _traced(writer)
    for row in _rows(30):
        writer.submit(row)
    assert writer.flush(60)
    writer.close()
    writes = [s for s in seen if s.startswith(("INSERT", "UPDATE", "BEGIN", "COMMIT"))]
    assert writes and all(s.startswith("INSERT INTO moesif_intake VALUES") for s in writes)
    assert [e.transaction_id for e in stored_events(path)] == ["first"] + [f"t-{i}" for i in range(30)]
    assert _counters(path)["pending"] == 31
    assert query(path, "SELECT COUNT(*) FROM event_bodies") == query(path, "SELECT COUNT(*) FROM events")


def test_a_group_over_the_cap_writes_nothing_in_one_statement(tmp_path):
    path = str(tmp_path / "q.sqlite")
    conn = storage.connect(path)
    assert intake.prepare_group_insert(conn)
    assert intake.insert_group(conn, _rows(140, "a"), None, cap=150)
    # 140 pending; 20 more would make 160: refused whole, nothing of it kept.
    assert not intake.insert_group(conn, _rows(20, "b"), None, cap=150)
    assert not conn.in_transaction
    assert intake.pending_events(conn) == 140
    assert query(path, "SELECT COUNT(*) FROM events") == [(2,)]  # two segments of 100 and 40
    assert intake.insert_group(conn, _rows(10, "c"), None, cap=150)  # exactly up to the cap
    conn.close()
    assert _counters(path)["pending"] == 150


def test_at_the_cap_the_writer_keeps_what_fits_and_counts_the_rest(tmp_path):
    # The one statement refuses the group; the careful path keeps its first 20.
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=50, commit_interval=0.05)
    for row in _rows(30, "a"):
        writer.submit(row)
    assert writer.flush(60)
    seen = _traced(writer)
    for row in _rows(30, "b"):
        writer.submit(row)
    assert writer.flush(60)
    writer.close()
    assert any(s.startswith("BEGIN IMMEDIATE") for s in seen)
    stored = [e.transaction_id for e in stored_events(path)]
    assert stored == [f"a-{i}" for i in range(30)] + [f"b-{i}" for i in range(20)]
    c = _counters(path)
    assert (c["pending"], c["dropped"]) == (50, 10)
    assert dict(query(path, "SELECT reason, count FROM problem_counts")) == {"drop:queue-full": 10}


def test_counts_waiting_to_be_written_go_with_the_group_in_one_transaction(tmp_path):
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=1000, commit_interval=0.05)
    writer.submit(("first", time.time(), event_json("first")))
    assert writer.flush(60)
    seen = _traced(writer)
    writer._drops_lock.acquire()  # hold the count back until the events are buffered too
    try:
        writer._uncounted_drops += 1
        writer._uncounted_problems["drop:test"] = 1
        for row in _rows(5):
            writer.submit(row)
    finally:
        writer._drops_lock.release()
    assert writer.flush(60)
    writer.close()
    assert any(s.startswith("BEGIN IMMEDIATE") for s in seen)
    assert not [s for s in seen if "moesif_intake" in s]
    c = _counters(path)
    assert (c["pending"], c["dropped"]) == (6, 1)


def test_a_connection_that_read_an_older_schema_still_writes_a_group(tmp_path):
    # A worker that opened the file while another process was migrating it holds
    # the schema as it was then; the trigger's body must not see that old copy.
    path = str(tmp_path / "q.sqlite")
    early = sqlite3.connect(path, isolation_level=None)
    for _, _, sql in storage.migrations()[:3]:  # before apps (0004) and segments (0005)
        for statement in storage._statements(sql):
            early.execute(statement)
    early.execute("PRAGMA user_version = 3")
    assert early.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] > 0  # its schema copy: version 3
    storage.connect(path).close()  # another process brings the file up to date
    assert intake.prepare_group_insert(early)
    assert intake.insert_group(early, _rows(3), 7, cap=100)
    early.close()
    assert [e.transaction_id for e in stored_events(path)] == ["t-0", "t-1", "t-2"]
    assert query(path, "SELECT app, event_count FROM events") == [(7, 3)]
