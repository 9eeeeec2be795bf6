"""Segments (migration 0005): one events row holds a writer's group of events.

What must hold whatever the rows hold: every counter and the cap count events,
a 400/413 isolates the one bad event of a segment, BATCH_SIZE bounds a post,
a file written with one row per event migrates losslessly and drains, and a
corrupt file is salvaged segment by segment.
"""
from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import replace

from moesifasgi import storage
from moesifasgi.queue_writer import QueueWriter
from moesifasgi.storage import intake
from moesifasgi_flush import queue_store as qs
from moesifasgi_flush.flusher import Flusher
from moesifasgi.testing.local_collector import LocalCollector
from tests.flush_support import APP_ID, FAST, damage_page_holding, event_json, insert_events, query, stored_events


def flusher_for(path, base_uri, **changes):
    return Flusher(path, APP_ID, base_uri, replace(FAST, **changes))


def counters(path):
    return dict(query(path, "SELECT name, value FROM counters"))


def event_posts(collector, status=None):
    return [r for r in collector.request_log if r[1] == "/v1/events/batch" and (status is None or r[2] == status)]


def test_a_group_is_stored_as_one_row_and_the_pending_counter_counts_its_events(path):
    insert_events(path, 250)
    assert query(path, "SELECT event_count FROM events ORDER BY id") == [(100,), (100,), (50,)]
    assert counters(path)["pending"] == 250
    assert query(path, "SELECT COUNT(*) FROM event_bodies") == [(3,)]


async def test_one_bad_event_inside_a_segment_is_dead_lettered_alone_and_the_rest_is_sent(path, collector):
    tids = insert_events(path, 40)
    bad = tids[17]
    collector.reject_events_where(lambda event: event.get("transaction_id") == bad)
    flusher = flusher_for(path, collector.url, batch_size=100)
    stats = await flusher.drain()
    await flusher.aclose()
    assert (stats.sent, stats.dead_lettered, stats.remaining) == (39, 1, 0)
    assert collector.distinct_transaction_ids() == set(tids) - {bad}
    assert query(path, "SELECT transaction_id, status FROM dead_letters") == [(bad, 400)]
    assert {k: counters(path)[k] for k in ("pending", "sent", "dead_lettered")} == \
        {"pending": 0, "sent": 39, "dead_lettered": 1}
    assert query(path, "SELECT COUNT(*) FROM event_bodies") == [(0,)]  # no text left behind


async def test_a_413_for_one_segment_splits_it_in_halves_and_sends_every_event(path, collector):
    tids = insert_events(path, 16)
    collector.fail_next(413)
    flusher = flusher_for(path, collector.url, batch_size=16)
    stats = await flusher.drain()
    await flusher.aclose()
    assert (stats.sent, stats.dead_lettered) == (16, 0)
    assert [(r[2], r[3]) for r in event_posts(collector)] == [(413, 0), (201, 8), (201, 8)]
    assert collector.distinct_transaction_ids() == set(tids)
    assert counters(path)["sent"] == 16 and counters(path)["pending"] == 0


async def test_a_batch_size_below_the_segment_size_bounds_every_post(path, collector):
    tids = insert_events(path, 100)  # one segment of 100
    flusher = flusher_for(path, collector.url, batch_size=30)
    stats = await flusher.drain()
    await flusher.aclose()
    assert stats.sent == 100 and stats.remaining == 0
    assert sorted(r[3] for r in event_posts(collector)) == [10, 30, 30, 30]
    assert collector.transaction_ids() and collector.distinct_transaction_ids() == set(tids)
    assert collector.duplicates() == 0


def test_a_claim_takes_whole_segments_up_to_the_batch_size_in_events(path):
    conn = storage.connect(path)
    for _ in range(4):
        insert_events(path, 30)
    rows = qs.claim(conn, "me", 100, 60)
    assert [r.count for r in rows] == [30, 30, 30]
    assert sum(len(r.event_bodies()) for r in rows) == 90
    assert qs.ack(conn, "me", [r.id for r in rows]) == 90
    assert qs.pending(conn) == 30 and qs.counters(conn)["sent"] == 90
    conn.close()


def test_the_cap_counts_events_inside_a_group(tmp_path):
    path = str(tmp_path / "q.sqlite")
    writer = QueueWriter(path, capacity=150)
    for i in range(200):
        assert writer.submit((f"t-{i}", time.time(), event_json(f"t-{i}")))
    assert writer.flush(60)
    writer.close()
    stored = [e.transaction_id for e in stored_events(path)]
    assert stored == [f"t-{i}" for i in range(150)]
    c = counters(path)
    assert (c["pending"], c["dropped"]) == (150, 50)


def test_peek_shows_the_events_inside_a_segment_in_order(path):
    tids = insert_events(path, 5)
    conn = storage.connect(path)
    shown = qs.peek(conn, 3)
    conn.close()
    assert [p["transaction_id"] for p in shown] == tids[:3]
    assert [p["event"]["transaction_id"] for p in shown] == tids[:3]


def test_dead_lettering_a_claimed_segment_makes_one_dead_letter_per_event_and_requeue_restores_them(path):
    tids = insert_events(path, 4)
    conn = storage.connect(path)
    rows = qs.claim(conn, "me", 10, 60)
    assert qs.dead_letter(conn, "me", [r.id for r in rows], 400, "HTTP 400") == 4
    assert [t for (t,) in conn.execute("SELECT transaction_id FROM dead_letters ORDER BY id")] == tids
    assert (qs.pending(conn), qs.counters(conn)["dead_lettered"]) == (0, 4)
    assert qs.requeue_dead_letters(conn) == 4
    assert qs.pending(conn) == 4
    conn.close()
    assert [e.transaction_id for e in stored_events(path)] == tids


def _file_at_schema(path: str, version: int) -> sqlite3.Connection:
    """A queue file with the schema as it was at `version` (before segments: 4)."""
    conn = storage.connect(path, migrate=False)
    for number, _, sql in storage.migrations():
        if number > version:
            break
        with storage.immediate(conn):
            for statement in storage._statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
    return conn


async def test_a_file_written_one_row_per_event_migrates_without_loss_and_drains_with_new_segments(tmp_path):
    path = str(tmp_path / "old.sqlite")
    conn = _file_at_schema(path, 4)
    now = time.time()
    old = [f"old-{i}" for i in range(120)]
    with storage.immediate(conn):
        conn.execute("INSERT INTO apps (application_id) VALUES (?)", (APP_ID,))
        conn.executemany("INSERT INTO events (transaction_id, created_at, body, app) VALUES (?, ?, ?, 1)",
                         [(t, now, event_json(t)) for t in old])
        # One in flight when the upgrade happens: its claim stays until it expires.
        conn.execute("UPDATE events SET claimed_by = 'old-flusher', claimed_until = ? WHERE id = 1", (now - 1,))
        conn.execute("UPDATE counters SET value = 7 WHERE name = 'sent'")
    conn.close()
    assert counters(path)["pending"] == 120  # (storage.connect in query() migrates)
    assert storage.schema_version(storage.connect(path)) == storage.latest_version()
    new = insert_events(path, 30)
    with LocalCollector(application_id=APP_ID) as collector:
        flusher = flusher_for(path, collector.url)
        stats = await flusher.drain()
        await flusher.aclose()
        assert stats.sent == 150 and stats.remaining == 0
        assert collector.distinct_transaction_ids() == set(old) | set(new)
    c = counters(path)
    assert (c["pending"], c["sent"]) == (0, 157)


async def test_a_corrupt_file_is_salvaged_segment_by_segment_with_exact_counts(queue_path, collector):
    tids = []
    for _ in range(3):  # three groups: three segments of 100 events of ~1 KB
        tids += insert_events(queue_path, 100, prefix=f"sg{len(tids)}",
                              body=lambda t: event_json(t, metadata={"pad": "s" * 900}))
    middle = tids[150].encode()
    damage_page_holding(queue_path, middle)
    moved = storage.quarantine(queue_path, storage.file_identity(queue_path))
    flusher = flusher_for(queue_path, collector.url)
    stats = await flusher.drain(20)
    await flusher.aclose()
    received = collector.distinct_transaction_ids()
    # The damaged page belongs to the middle segment: the other two arrive whole.
    assert set(tids[:100]) | set(tids[200:]) <= received
    assert stats.remaining == 0 and counters(queue_path)["sent"] == len(received & set(tids)) == stats.sent
    assert os.path.exists(moved + ".salvaged")


def test_segments_are_cut_by_bytes_too(path):
    big = "x" * (intake.SEGMENT_BYTES // 3)
    rows = [(f"b-{i}", 1.0, event_json(f"b-{i}", metadata={"pad": big})) for i in range(7)]
    conn = storage.connect(path)
    with storage.immediate(conn):
        intake.insert_events(conn, rows, None)
    counts = [n for (n,) in conn.execute("SELECT event_count FROM events ORDER BY id")]
    conn.close()
    assert sum(counts) == 7 and max(counts) <= 3 and len(counts) >= 3
    assert [e.transaction_id for e in stored_events(path)] == [r[0] for r in rows]
