from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
import uuid

import pytest

from moesifasgi import storage
from moesifasgi.queue_writer import QueueWriter
from moesifasgi.storage.intake import SEGMENT_EVENTS, insert_events
from tests.flush_support import stored_events


def _row(i: int = 0) -> tuple:
    return (str(uuid.uuid4()), time.time(), '{"n": %d}' % i)


def _counters(path) -> dict:
    conn = sqlite3.connect(str(path))
    try:
        return dict(conn.execute("SELECT name, value FROM counters"))
    finally:
        conn.close()


@pytest.mark.parametrize("count", [1, 2, 3, 41, 99, 100, 101, 239, 240, 241, 481, 500])
def test_a_group_of_any_size_is_inserted_whole_in_order_with_its_app(tmp_path, count):
    # A group is stored as segments of at most SEGMENT_EVENTS events: every cut
    # must keep each event, its transaction id, its JSON and its place; a
    # segment's time is its oldest event's.
    path = str(tmp_path / "q.sqlite")
    conn = storage.connect(path)
    rows = [(f"id-{i}", 1000.0 + i, '{"n": %d, "transaction_id": "id-%d"}' % (i, i)) for i in range(count)]
    with storage.immediate(conn):
        insert_events(conn, rows, None)
    segments = conn.execute("SELECT event_count FROM events ORDER BY id").fetchall()
    conn.close()
    stored = [(e.transaction_id, e.created_at, e.body, e.app) for e in stored_events(path)]
    assert stored == [(tid, 1000.0 + i // SEGMENT_EVENTS * SEGMENT_EVENTS, body, None)
                      for i, (tid, _, body) in enumerate(rows)]
    assert [n for (n,) in segments] == [min(SEGMENT_EVENTS, count - start) for start in range(0, count, SEGMENT_EVENTS)]
    assert _counters(path)["pending"] == count


def test_submitted_events_are_committed_in_order_with_their_ids(tmp_path):
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=1000)
    rows = [_row(i) for i in range(300)]
    for row in rows:
        assert writer.submit(row)
    assert writer.flush(60)
    writer.close()
    stored = [(e.transaction_id, e.body) for e in stored_events(path)]
    assert [body for _, body in stored] == [r[2] for r in rows]
    # Transaction ids are read back from the JSON past a segment's first event.
    assert [tid for tid, _ in stored][:1] == [rows[0][0]]
    assert writer.committed == 300


def test_under_steady_traffic_the_writer_commits_on_its_timer_without_a_wake_up_per_group(tmp_path, monkeypatch):
    # Each wake-up of the writer thread costs more CPU than the commit it leads
    # to (and a futex wake on the request path for the set()): while events keep
    # coming, the thread sleeps one interval per group and submit() finds the
    # flag still set. Events come every millisecond here, far inside the 50 ms
    # interval, so a slow machine's hiccups rarely make the writer idle again.
    sets = []

    class CountingEvent(threading.Event):
        def set(self) -> None:
            sets.append(time.monotonic())
            super().set()

    monkeypatch.setattr(threading, "Event", CountingEvent)
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=100_000, commit_interval=0.05)
    monkeypatch.undo()
    deadline = time.monotonic() + 60
    sent = 0
    while writer.commits < 12 and time.monotonic() < deadline:
        assert writer.submit(_row(sent))
        sent += 1
        time.sleep(0.001)
    commits, woken = writer.commits, len(sets)
    assert writer.flush(60)
    writer.close()
    assert commits >= 12
    assert len(stored_events(path)) == sent
    # One set() to leave the idle wait; a few more if the machine stalled the
    # submitting loop past an interval. Without the timer mode: one per group.
    assert woken <= commits // 3, (woken, commits)


def test_events_beyond_the_cap_are_dropped_and_counted_durably(tmp_path):
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=50)
    results = []
    for i in range(80):
        writer.submit(_row(i), results.append)
    writer.flush(60)
    writer.close()
    counters = _counters(path)
    assert counters["pending"] == 50
    assert counters["dropped"] == 30
    assert results.count(True) == 50 and results.count(False) == 30


def test_close_commits_everything_still_held_in_memory(tmp_path):
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=10_000, commit_interval=0.5)
    for i in range(1000):
        writer.submit(_row(i))
    writer.close()
    assert _counters(path)["pending"] == 1000


def test_drops_counted_before_the_queue_exist_reach_the_durable_counter(tmp_path):
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=10)
    writer.count_drop(3)
    writer.submit(_row())
    writer.close()
    assert _counters(path)["dropped"] == 3


def test_an_unwritable_queue_drops_and_counts_without_raising(tmp_path, caplog):
    path = tmp_path / "q.sqlite"
    path.mkdir()  # unusable, yet not corrupt: nothing to move aside (root ignores chmod)
    writer = QueueWriter(str(path), capacity=10)
    outcomes = []
    for i in range(20):
        assert writer.submit(_row(i), outcomes.append)
    writer.flush(60)
    writer.close()
    assert outcomes == [False] * 20
    assert writer.dropped == 20
    errors = [r for r in caplog.records if "cannot write to the queue file" in r.getMessage()]
    assert 1 <= len(errors) <= 2  # once, not once per event
    assert path.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_a_corrupt_queue_file_is_moved_aside_and_the_events_go_to_a_fresh_one(tmp_path, caplog):
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"garbage, not sqlite" * 100)
    writer = QueueWriter(str(path), capacity=100)
    outcomes = []
    for i in range(20):
        assert writer.submit(_row(i), outcomes.append)
    writer.flush(60)
    writer.close()
    assert outcomes == [True] * 20 and writer.dropped == 0
    assert _counters(str(path))["pending"] == 20
    [moved] = tmp_path.glob("q.sqlite.corrupt-*")
    assert moved.read_bytes() == b"garbage, not sqlite" * 100


def test_a_removed_queue_directory_is_recreated_and_writing_resumes(tmp_path):
    directory = tmp_path / "gone"
    path = str(directory / "q.sqlite")
    writer = QueueWriter(path, capacity=100)
    writer.submit(_row(1))
    writer.flush(60)
    for name in os.listdir(directory):
        os.unlink(directory / name)
    os.rmdir(directory)
    time.sleep(1.1)  # past the writer's file identity check interval
    writer.submit(_row(2))
    writer.flush(60)
    writer.close()
    assert [e.body for e in stored_events(path)] == ['{"n": 2}']


def _write_many(path: str, count: int, capacity: int, barrier, out) -> None:
    writer = QueueWriter(path, capacity=capacity)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    accepted = []
    barrier.wait()
    for tid in ids:
        writer.submit((tid, time.time(), '{"transaction_id": "%s"}' % tid), lambda ok, tid=tid: ok and accepted.append(tid))
    writer.close(30)
    out.put((ids, accepted))


@pytest.mark.parametrize("capacity", [100_000, 3_000])
def test_four_processes_writing_at_once_end_with_exactly_their_events_and_the_cap(tmp_path, capacity):
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_write_many, args=(path, 2000, capacity, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    accepted = {tid for _, acc in results for tid in acc}
    stored = [e.transaction_id for e in stored_events(path)]
    counters = _counters(path)
    assert len(stored) == len(set(stored)) == len(accepted)
    assert set(stored) == accepted
    assert len(stored) == min(8000, capacity)
    assert counters["pending"] == len(stored)
    assert counters["dropped"] == 8000 - len(stored)


def test_a_first_connection_kept_waiting_past_the_busy_timeout_to_migrate_keeps_its_events(tmp_path, monkeypatch):
    # A worker starting on a new file while another process holds the write lock
    # for longer than the busy timeout: connect() fails "locked", which is a
    # reason to try again, not to drop the group.
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 200)
    path = str(tmp_path / "queue.sqlite")
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")  # the schema is not there yet: the writer must wait to migrate
    writer = QueueWriter(path, 1000)
    try:
        assert writer.submit(("tid-1", time.time(), "{}"))
        assert not writer.flush(1.0)  # held: still waiting, not given up
        holder.execute("ROLLBACK")
        assert writer.flush(30)
        assert writer.dropped == 0
        assert [e.transaction_id for e in stored_events(path)] == ["tid-1"]
    finally:
        holder.close()
        writer.close()
