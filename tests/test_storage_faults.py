"""Storage faults on real files: a full disk, a damaged page, a locked or replaced
file, two apps on one file. Each ends in a known state, with every call counted."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

from moesifasgi import profiles, storage
from moesifasgi.queue_writer import QueueWriter
from moesifasgi.storage import maintenance, queue_file, space
from moesifasgi_flush.flusher import Flusher
from moesifasgi.testing.local_collector import LocalCollector
from tests.flush_support import APP_ID, FAST, damage_page_holding, event_json, eventually, insert_events, wait_until


def _counters(path: str) -> dict:
    conn = sqlite3.connect(path, timeout=5)
    try:
        return dict(conn.execute("SELECT name, value FROM counters"))
    finally:
        conn.close()


def _row(size: int = 1000) -> tuple:
    tid = str(uuid.uuid4())
    return tid, time.time(), event_json(tid, metadata={"pad": "x" * size})


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own (tmpfs), so that the disk really fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _fill_disk(directory) -> str:
    """Write a file until the disk is full; returns its path."""
    filler = os.path.join(str(directory), "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_commit_that_fails_on_a_full_disk_loses_no_drop_count(small_disk, monkeypatch):
    monkeypatch.setattr(space, "LOW_SPACE_BYTES", 0)  # let the commits themselves fail
    path = str(small_disk / "q.sqlite")
    filler = small_disk / "other-files"
    filler.write_bytes(b"\0" * 1024 * 1024)  # something else holds half the disk
    writer = QueueWriter(path, capacity=100_000)
    answered = 0
    for i in range(1500):
        if i % 10 == 0:
            writer.count_drop()  # e.g. a mask that raised: counted, never written
        else:
            writer.submit(_row())
        answered += 1
        if i % 100 == 0:
            writer.flush(5)
    writer.flush(10)
    assert writer.dropped > 150, "the disk never filled up"
    # Space comes back: the drops held in memory reach the durable counter.
    filler.unlink()
    assert wait_until(lambda: _counters(path)["pending"] + _counters(path)["dropped"] == answered, 5)
    writer.close()
    counters = _counters(path)
    assert counters["pending"] + counters["dropped"] == answered
    assert counters["pending"] == writer.committed



@pytest.fixture
def page_limited_queue(monkeypatch):
    """Every queue connection capped at `pages` pages (PRAGMA max_page_count): a
    file that cannot grow fails its writes with SQLite's "database or disk is
    full", as on a full disk, on any host (no mount, no root)."""
    opened = queue_file.connect

    def limited(pages: int) -> None:
        def connect(path: str, **options: object) -> sqlite3.Connection:
            conn = opened(path, **options)
            conn.execute(f"PRAGMA max_page_count = {pages}")
            return conn

        monkeypatch.setattr(queue_file, "connect", connect)

    return limited


async def test_a_queue_file_that_cannot_grow_drops_and_counts_new_events_and_still_drains(queue_path,
                                                                                        page_limited_queue):
    page_limited_queue(300)  # about 1.2 MB
    writer = QueueWriter(queue_path, capacity=100_000)
    answered = 0
    while writer.dropped <= 100 and answered < 5000:
        writer.count_drop()  # e.g. a mask that raised: counted, never written
        answered += 1
        for _ in range(49):
            writer.submit(_row())
            answered += 1
        # A group that does not fit is dropped and counted, not retried for ever.
        assert await asyncio.to_thread(writer.flush, 10)
    assert writer.dropped > 100, "the file never filled up"
    assert await eventually(lambda: _counters(queue_path)["dropped"] == writer.dropped, 10)
    with LocalCollector(application_id=APP_ID) as collector:
        flusher = Flusher(queue_path, APP_ID, collector.url, FAST)
        stats = await flusher.drain(30)
        assert stats.sent == writer.committed and stats.remaining == 0
        # The pages freed by delivery take new events again.
        for _ in range(20):
            assert writer.submit(_row())
            answered += 1
        assert await asyncio.to_thread(writer.flush, 10)
        stats = await flusher.drain(30)
        await flusher.aclose()
        sent = len(collector.distinct_transaction_ids())
    await asyncio.to_thread(writer.close)
    counters = _counters(queue_path)
    assert sent == writer.committed == counters["sent"]
    assert sent + counters["pending"] + counters["dropped"] == answered


def test_drops_reach_the_durable_counter_within_two_seconds_when_nothing_else_is_written(queue_path):
    writer = QueueWriter(queue_path, capacity=100)
    writer.submit(_row())
    writer.flush(5)
    started = time.monotonic()
    writer.count_drop(5)  # every event dropped by a broken callback: nothing is written
    assert wait_until(lambda: _counters(queue_path)["dropped"] == 5, 5)
    assert time.monotonic() - started < 2.5
    writer.close()


def test_memory_held_while_the_file_is_locked_is_bounded_in_bytes(queue_path, monkeypatch):
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 200)
    storage.connect(queue_path).close()
    blocker = sqlite3.connect(queue_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    writer = QueueWriter(queue_path, capacity=10_000, max_buffered_bytes=2_000_000)
    outcomes = []
    for _ in range(40):  # 40 events of 200 KB: 8 MB offered
        writer.submit(_row(200_000), outcomes.append)
        assert writer.buffered_bytes <= 2_000_000
    assert writer.dropped >= 30
    blocker.execute("ROLLBACK")
    blocker.close()
    assert writer.flush(10)
    writer.close()
    counters = _counters(queue_path)
    assert counters["pending"] + counters["dropped"] == 40
    assert counters["pending"] == outcomes.count(True) and counters["pending"] >= 5


def test_profiles_written_after_the_file_was_replaced_go_to_the_new_file(tmp_path):
    directory = tmp_path / "state"
    path = str(directory / "q.sqlite")
    assert profiles.update_user({"user_id": "before"}, queue_path=path).result(5) == 1
    for name in os.listdir(directory):
        os.unlink(directory / name)
    os.rmdir(directory)  # an operator's rm -r
    assert profiles.update_user({"user_id": "after"}, queue_path=path).result(5) == 1
    conn = storage.connect(path)
    assert conn.execute("SELECT profile_id FROM profiles").fetchall() == [("after",)]
    conn.close()


async def test_a_full_disk_does_not_stop_delivery_and_new_events_are_dropped_and_counted(small_disk, monkeypatch):
    monkeypatch.setattr(space, "LOW_SPACE_BYTES", 640 * 1024)
    monkeypatch.setattr(space, "RESERVE_BYTES", 384 * 1024)
    path = str(small_disk / "q.sqlite")
    with LocalCollector(application_id=APP_ID) as collector:
        collector.fail_for(503, 3600)  # Moesif is down while the disk fills
        flusher = Flusher(path, APP_ID, collector.url, FAST)
        task = asyncio.ensure_future(flusher.run())
        assert await eventually(lambda: os.path.exists(path + ".reserve"), 10)
        writer = QueueWriter(path, capacity=100_000)
        answered = 0
        for i in range(1500):
            writer.submit(_row())
            answered += 1
            if i % 50 == 0:
                await asyncio.to_thread(writer.flush, 5)
        await asyncio.to_thread(writer.flush, 10)
        assert writer.dropped > 0, "the disk never ran low"
        _fill_disk(small_disk)  # something else takes the rest of the disk
        collector.reset_faults()  # Moesif is back: the backlog must drain anyway
        assert await eventually(lambda: _counters(path)["pending"] == 0
                                and len(collector.distinct_transaction_ids()) == writer.committed, 60), \
            (_counters(path), len(collector.distinct_transaction_ids()), writer.committed)
        # The pages freed by delivery take new events again, the disk still full.
        assert writer.submit(_row())
        await asyncio.to_thread(writer.flush, 10)
        answered += 1
        writer.close()
        assert await eventually(lambda: _counters(path)["pending"] == 0, 20)
        await flusher.stop()
        await asyncio.gather(task, return_exceptions=True)
        sent = len(collector.distinct_transaction_ids())
    counters = _counters(path)
    assert sent + counters["pending"] + counters["dropped"] == answered
    assert counters["sent"] == sent


async def test_damage_met_by_the_flusher_moves_the_file_aside_and_what_is_readable_is_delivered(queue_path,
                                                                                            collector):
    tids = insert_events(queue_path, 300, prefix="old", body=lambda t: event_json(t, metadata={"pad": "y" * 900}),
                         per_event_rows=True)
    damage_page_holding(queue_path, b"old-000150")
    writer = QueueWriter(queue_path, capacity=10_000)  # a worker keeps writing through the damage
    flusher = Flusher(queue_path, APP_ID, collector.url, dataclasses.replace(FAST, maintenance_interval=0.2))
    task = asyncio.ensure_future(flusher.run())
    try:
        directory = os.path.dirname(queue_path)
        assert await eventually(lambda: [n for n in os.listdir(directory) if ".corrupt-" in n], 20)
        new = [_row() for _ in range(20)]
        for row in new:
            writer.submit(row)
        await asyncio.to_thread(writer.flush, 5)
        received = collector.distinct_transaction_ids
        assert await eventually(lambda: {r[0] for r in new} <= received(), 20)
        # Everything but the rows of the damaged page (a few of 300) arrives.
        assert await eventually(lambda: len(set(tids) & received()) >= 280, 20), len(set(tids) & received())
    finally:
        writer.close()
        await flusher.stop()
        await asyncio.gather(task, return_exceptions=True)
    names = os.listdir(os.path.dirname(queue_path))
    assert [n for n in names if n.endswith(".salvaged")], names


async def test_two_apps_sharing_one_queue_file_have_their_events_posted_under_their_own_ids(queue_path):
    with LocalCollector() as collector:  # accepts any application id
        first = QueueWriter(queue_path, capacity=1000, application_id="app-one")
        second = QueueWriter(queue_path, capacity=1000, application_id="app-two")
        rows = {}
        for i in range(20):
            for writer, app in ((first, "app-one"), (second, "app-two")):
                row = _row(10)
                rows[row[0]] = app
                writer.submit(row)
        for writer in (first, second):
            await asyncio.to_thread(writer.close)
        flusher = Flusher(queue_path, "app-one", collector.url, FAST)
        stats = await flusher.drain(10)
        await flusher.aclose()
        assert stats.sent == 40
        assert {tid: collector.application_of[tid] for tid in rows} == rows


async def test_the_file_shrinks_after_a_large_backlog_drains(queue_path, collector, monkeypatch):
    monkeypatch.setattr(maintenance, "COMPACT_MIN_BYTES", 1024 * 1024)
    insert_events(queue_path, 4000, body=lambda t: event_json(t, metadata={"pad": "z" * 1500}))
    full = os.path.getsize(queue_path)
    assert full > 6_000_000
    options = dataclasses.replace(FAST, maintenance_interval=0.2, batch_size=100)
    flusher = Flusher(queue_path, APP_ID, collector.url, options)
    task = asyncio.ensure_future(flusher.run())
    try:
        assert await eventually(lambda: _counters(queue_path)["pending"] == 0, 60)
        assert await eventually(lambda: os.path.getsize(queue_path) < full / 4, 30), os.path.getsize(queue_path)
    finally:
        await flusher.stop()
        await asyncio.gather(task, return_exceptions=True)


def test_an_older_file_without_incremental_vacuum_is_switched_over_once_nearly_empty(queue_path):
    conn = sqlite3.connect(queue_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE filler (x)")  # tables exist: auto_vacuum stays NONE
    conn.close()
    conn = storage.connect(queue_path)
    insert_events(queue_path, 500, body=lambda t: event_json(t, metadata={"pad": "w" * 1500}))
    conn.execute("DELETE FROM events")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    assert maintenance.compact_step(conn) > 0
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == maintenance.AUTO_VACUUM_INCREMENTAL
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    conn.close()


def test_status_meeting_damage_moves_the_file_aside_and_a_fresh_queue_starts(queue_path):
    from click.testing import CliRunner

    from moesifasgi_flush.cli import cli

    insert_events(queue_path, 300, prefix="st", body=lambda t: event_json(t, metadata={"pad": "v" * 900}),
                         per_event_rows=True)
    damage_page_holding(queue_path, b"st-000150")
    result = CliRunner().invoke(cli, ["--queue", queue_path, "status"])
    assert result.exit_code != 0
    assert "moved to" in result.output, result.output
    directory = os.path.dirname(queue_path)
    assert [n for n in os.listdir(directory) if ".corrupt-" in n and not n.endswith(("-wal", "-shm"))]
    assert not os.path.exists(queue_path) or storage.file_identity(queue_path) is not None


def test_a_file_that_is_not_sqlite_given_to_status_is_refused_and_never_moved(tmp_path):
    from click.testing import CliRunner

    from moesifasgi_flush.cli import cli

    other = tmp_path / "notes.txt"
    other.write_text("not a database " * 500)
    result = CliRunner().invoke(cli, ["--queue", str(other), "status"])
    assert result.exit_code != 0
    assert other.exists() and not list(tmp_path.glob("*.corrupt-*"))


async def test_moesif_flush_drain_also_delivers_what_a_moved_corrupt_file_still_holds(queue_path, collector):
    tids = insert_events(queue_path, 200, prefix="dr", body=lambda t: event_json(t, metadata={"pad": "u" * 900}),
                         per_event_rows=True)
    damage_page_holding(queue_path, b"dr-000100")
    moved = storage.quarantine(queue_path, storage.file_identity(queue_path))
    flusher = Flusher(queue_path, APP_ID, collector.url, FAST)
    stats = await flusher.drain(20)
    await flusher.aclose()
    assert stats.remaining == 0
    assert len(set(tids) & collector.distinct_transaction_ids()) >= 180
    assert os.path.exists(moved + ".salvaged") and not os.path.exists(moved)



async def test_the_flusher_releases_its_reserve_on_a_full_disk_and_drains_once_moesif_is_back(small_disk,
                                                                                              monkeypatch):
    # No writer-side guard: the writers themselves run the disk full (the
    # low-space threshold set to 0, or something else eating the last bytes
    # between two checks). The WAL then ends full of commits that a checkpoint
    # cannot copy into the database, which would have to grow: every write the
    # flusher needs (claim, ack, lease) fails until something frees disk space.
    monkeypatch.setattr(space, "LOW_SPACE_BYTES", 0)
    monkeypatch.setattr(space, "RESERVE_BYTES", 384 * 1024)
    path = str(small_disk / "q.sqlite")
    with LocalCollector(application_id=APP_ID) as collector:
        collector.fail_for(503, 3600)  # Moesif is down: the flusher makes its reserve, sends nothing
        flusher = Flusher(path, APP_ID, collector.url, FAST)
        task = asyncio.ensure_future(flusher.run())
        assert await eventually(lambda: os.path.exists(path + ".reserve"), 10)
        await flusher.stop()
        await asyncio.gather(task, return_exceptions=True)
        writer = QueueWriter(path, capacity=100_000)
        answered = 0
        while writer.dropped == 0 and answered < 5000:
            for _ in range(50):
                writer.submit(_row())
                answered += 1
            await asyncio.to_thread(writer.flush, 10)
        assert writer.dropped > 0, "the disk never filled up"
        _fill_disk(small_disk)  # and the last free blocks go too
        assert os.path.exists(path + ".reserve")
        collector.reset_faults()  # Moesif is back: the backlog must drain anyway
        flusher = Flusher(path, APP_ID, collector.url, FAST)
        task = asyncio.ensure_future(flusher.run())
        try:
            assert await eventually(lambda: _counters(path)["pending"] == 0
                                    and len(collector.distinct_transaction_ids()) == writer.committed, 60), \
                (_counters(path), len(collector.distinct_transaction_ids()), writer.committed)
            assert not os.path.exists(path + ".reserve")
            # The pages freed by delivery take new events again, the disk still full.
            assert writer.submit(_row())
            answered += 1
            assert await eventually(lambda: len(collector.distinct_transaction_ids()) == writer.committed, 30)
            assert await eventually(lambda: _counters(path)["dropped"] == writer.dropped, 10)
            await asyncio.to_thread(writer.close)
        finally:
            await flusher.stop()
            await asyncio.gather(task, return_exceptions=True)
        sent = len(collector.distinct_transaction_ids())
    counters = _counters(path)
    assert sent + counters["pending"] + counters["dropped"] == answered


def test_two_threads_opening_a_new_queue_file_at_once_keep_their_commits_visible(tmp_path, monkeypatch):
    """After the queue directory is removed, a worker's event writer and its helper
    check reconnect at once. If one thread's check of the files ran while the other
    thread's SQLite created and locked them, its open()/close() dropped this
    process's POSIX locks; another process's last close then deleted the -wal this
    process went on committing to (events acknowledged, never seen again). The
    check is paused here right where that happened; the second connection must
    wait for it instead of slipping in."""
    from moesifasgi import queue_location

    path = str(tmp_path / "q" / "queue.sqlite")
    checked = queue_location._already_private
    paused, release = threading.Event(), threading.Event()

    def pause_after_the_first_check(candidate, *, create):
        answer = checked(candidate, create=create)
        if candidate == path and not answer and threading.current_thread().name == "first":
            paused.set()
            release.wait(60)  # until the second thread connected or had its chance
        return answer

    monkeypatch.setattr(queue_location, "_already_private", pause_after_the_first_check)
    conns = {}
    first = threading.Thread(target=lambda: conns.setdefault("first", storage.connect(path)), name="first")
    first.start()
    assert paused.wait(60)
    second = threading.Thread(target=lambda: conns.setdefault("second", storage.connect(path)), name="second")
    second.start()
    second.join(2)  # without the fix it connects now, inside the first one's check
    release.set()
    first.join(60)
    second.join(60)
    try:
        conns["second"].execute("INSERT INTO kv (key, value, updated_at) VALUES ('before', '1', 0)")
        # Another process opens the file and closes it: were it the last user, its close
        # checkpoints and deletes the -wal.
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                        "c.execute('SELECT count(*) FROM kv').fetchone(); c.close()", path], check=True, timeout=60)
        assert os.path.exists(path + "-wal"), "another process deleted the -wal this one still writes"
        conns["first"].execute("INSERT INTO kv (key, value, updated_at) VALUES ('after', '2', 0)")
        seen = subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                               "print(','.join(k for (k,) in c.execute('SELECT key FROM kv ORDER BY key')))", path],
                              check=True, timeout=60, capture_output=True, text=True).stdout.split()
        assert seen == ["after,before"]
    finally:
        for conn in conns.values():
            conn.close()
