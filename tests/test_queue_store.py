from __future__ import annotations

import json
import time

import pytest

import functools

from tests import flush_support
from tests.flush_support import event_json, query
from moesifasgi import storage
from moesifasgi.shared_state import SharedState
from moesifasgi_flush import queue_store as qs

# These tests pin the claim model row by row, on one-event rows (as files from
# before segments hold them, and as a cut segment becomes); tests/test_segments.py
# covers rows that hold many events.
insert_events = functools.partial(flush_support.insert_events, per_event_rows=True)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "queue.sqlite")


@pytest.fixture
def conn(path):
    c = storage.connect(path)
    yield c
    c.close()


def test_a_claim_takes_the_oldest_unclaimed_events_and_hides_them_from_another_drainer(path, conn):
    tids = insert_events(path, 7)
    first = qs.claim(conn, "a", 5, 60)
    second = qs.claim(conn, "b", 5, 60)
    assert [r.transaction_id for r in first] == tids[:5]
    assert [r.transaction_id for r in second] == tids[5:]
    assert qs.claim(conn, "c", 5, 60) == []
    assert json.loads(first[0].body)["transaction_id"] == tids[0]
    assert query(path, "SELECT DISTINCT attempts FROM events") == [(1,)]


def test_an_expired_claim_is_taken_again_and_its_old_owner_can_no_longer_delete_it(path, conn):
    insert_events(path, 3)
    now = time.time()
    old = qs.claim(conn, "dead", 3, 10, now=now)
    assert qs.claim(conn, "b", 3, 10, now=now + 5) == []
    again = qs.claim(conn, "b", 3, 10, now=now + 11)
    assert [r.id for r in again] == [r.id for r in old]
    assert qs.ack(conn, "dead", [r.id for r in old]) == 0
    assert qs.pending(conn) == 3
    assert qs.ack(conn, "b", [r.id for r in again]) == 3
    assert qs.pending(conn) == 0


def test_a_claim_stops_at_the_byte_cap_but_always_takes_one_event(path, conn):
    insert_events(path, 10, body=lambda t: json.dumps({"transaction_id": t, "pad": "é" * 500}))
    size = len(query(path, "SELECT CAST(body AS BLOB) FROM events LIMIT 1")[0][0]) + 1
    assert len(qs.claim(conn, "a", 10, 60, max_bytes=size * 3 + 1)) == 3
    assert len(qs.claim(conn, "a", 10, 60, max_bytes=10)) == 1


def test_ack_deletes_only_our_claimed_rows_and_counts_them_as_sent(path, conn):
    insert_events(path, 4)
    mine = qs.claim(conn, "me", 2, 60)
    theirs = qs.claim(conn, "other", 2, 60)
    assert qs.ack(conn, "me", [r.id for r in mine + theirs], success_at=123.5) == 2
    assert qs.counters(conn)["sent"] == 2
    assert qs.pending(conn) == 2
    assert qs.kv_get(conn, qs.KV_LAST_SUCCESS) == "123.5"


def test_released_events_can_be_claimed_again_at_once(path, conn):
    insert_events(path, 4)
    rows = qs.claim(conn, "me", 4, 60)
    assert qs.release(conn, "me", [rows[0].id, rows[1].id]) == 2
    assert [r.id for r in qs.claim(conn, "b", 4, 60)] == [rows[0].id, rows[1].id]
    assert qs.release(conn, "me") == 2


def test_a_dead_letter_keeps_status_and_reason_and_requeue_restores_the_same_event(path, conn):
    tids = insert_events(path, 3)
    rows = qs.claim(conn, "me", 3, 60)
    assert qs.dead_letter(conn, "me", [rows[1].id], 400, "HTTP 400: bad event") == 1
    assert qs.dead_letter(conn, "someone-else", [rows[2].id], 400, "not ours") == 0
    [letter] = qs.list_dead_letters(conn)
    assert (letter["transaction_id"], letter["status"], letter["reason"]) == (tids[1], 400, "HTTP 400: bad event")
    assert qs.pending(conn) == 2
    assert qs.counters(conn)["dead_lettered"] == 1
    assert qs.requeue_dead_letters(conn) == 1
    assert qs.dead_letter_count(conn) == 0
    assert query(path, "SELECT transaction_id, body FROM events ORDER BY id DESC LIMIT 1") == [(tids[1], event_json(tids[1]))]


def test_purge_deletes_the_chosen_dead_letters_or_all_of_them(path, conn):
    insert_events(path, 3)
    rows = qs.claim(conn, "me", 3, 60)
    qs.dead_letter(conn, "me", [r.id for r in rows], None, "too old")
    ids = [d["id"] for d in qs.list_dead_letters(conn)]
    assert qs.purge_dead_letters(conn, ids[:1]) == 1
    assert qs.requeue_dead_letters(conn, ids[1:2]) == 1
    assert qs.purge_dead_letters(conn) == 1
    assert qs.dead_letter_count(conn) == 0 and qs.pending(conn) == 1


def test_a_stored_config_moves_updated_at_only_when_it_changes_and_workers_see_it(path, conn):
    qs.kv_set(conn, qs.KV_CONFIG, json.dumps({"sample_rate": 50}), now=100.0)
    qs.kv_set(conn, qs.KV_CONFIG, json.dumps({"sample_rate": 50}), now=200.0)
    assert qs.kv_get_with_time(conn, qs.KV_CONFIG)[1] == 100.0
    shared = SharedState()
    shared.refresh(conn)
    assert shared.config == {"sample_rate": 50}
    # Same clock reading as the previous write: updated_at must still move forward.
    qs.kv_set_many(conn, {qs.KV_CONFIG: json.dumps({"sample_rate": 10})}, now=100.0)
    assert qs.kv_get_with_time(conn, qs.KV_CONFIG)[1] > 100.0
    shared.refresh(conn)
    assert shared.config == {"sample_rate": 10}


def test_peek_shows_parsed_events_in_queue_order_without_claiming_them(path, conn):
    tids = insert_events(path, 3)
    qs.claim(conn, "me", 1, 60)
    peeked = qs.peek(conn, 2)
    assert [p["transaction_id"] for p in peeked] == tids[:2]
    assert [p["in_flight"] for p in peeked] == [True, False]
    assert peeked[1]["event"]["transaction_id"] == tids[1]
    assert query(path, "SELECT COUNT(*) FROM events WHERE claimed_by IS NULL") == [(2,)]


def test_scan_stats_counts_claims_in_flight_and_the_oldest_event_age(path, conn):
    assert qs.scan_stats(conn) == (0, None)
    insert_events(path, 2, created_at=1000.0)
    insert_events(path, 2, created_at=500.0)  # requeued-style: newer id, older event
    qs.claim(conn, "me", 3, 60, now=2000.0)
    assert qs.scan_stats(conn, now=2010.0) == (3, 1510.0)
    assert qs.scan_stats(conn, now=2100.0)[0] == 0
