"""A running flusher waits up to batch_wait (EVENT_BATCH_TIMEOUT) to fill a batch."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from moesifasgi.settings import parse_settings
from moesifasgi_flush.flusher import Flusher
from tests.flush_support import APP_ID, FAST, eventually, insert_events, query


def event_posts(collector):
    return [r for r in collector.request_log if r[1] == "/v1/events/batch" and r[2] == 201]


def counter(path, name):
    return query(path, "SELECT value FROM counters WHERE name = ?", name)[0][0]


async def run_for(flusher):
    return asyncio.ensure_future(flusher.run())


async def test_a_partial_batch_waits_for_batch_wait_then_goes_out_whole(path, collector):
    # batch_wait is long next to the 0.2 s between the two inserts, so that a
    # stalled machine does not send the first five alone.
    flusher = Flusher(path, APP_ID, collector.url, replace(FAST, batch_size=50, batch_wait=2.0))
    task = await run_for(flusher)
    assert await eventually(lambda: flusher.is_leader)
    started = time.monotonic()
    tids = insert_events(path, 5)
    await asyncio.sleep(0.2)
    tids += insert_events(path, 15)
    assert await eventually(lambda: collector.event_count == 20)
    waited = time.monotonic() - started
    await flusher.stop()
    await asyncio.gather(task, return_exceptions=True)
    assert [r[3] for r in event_posts(collector)] == [20]  # one post, not one per insert
    # It waited for batch_wait (from the first insert), not for a full batch.
    assert 1.9 <= waited < 10.0
    assert collector.distinct_transaction_ids() == set(tids)


async def test_full_batches_go_out_at_once_and_accepted_rows_are_deleted_while_waiting(path, collector):
    flusher = Flusher(path, APP_ID, collector.url, replace(FAST, batch_size=50, batch_wait=30.0))
    task = await run_for(flusher)
    assert await eventually(lambda: flusher.is_leader)
    tids = insert_events(path, 170)
    # Three full batches without waiting; the last 20 wait (30 s here).
    assert await eventually(lambda: collector.event_count == 150)
    # Every worker's accepted rows are deleted, not left claimed while the gate waits.
    assert await eventually(lambda: counter(path, "sent") == 150 and counter(path, "pending") == 20)
    assert sorted(r[3] for r in event_posts(collector)) == [50, 50, 50]
    await flusher.stop()
    await asyncio.gather(task, return_exceptions=True)
    assert counter(path, "pending") == 20 and set(collector.distinct_transaction_ids()) < set(tids)


async def test_drain_never_waits_for_a_full_batch(path, collector):
    tids = insert_events(path, 7)
    flusher = Flusher(path, APP_ID, collector.url, replace(FAST, batch_size=50, batch_wait=30.0))
    started = time.monotonic()
    stats = await flusher.drain()
    await flusher.aclose()
    assert stats.sent == 7 and time.monotonic() - started < 15  # batch_wait is 30 s
    assert collector.distinct_transaction_ids() == set(tids)


def test_the_original_batch_settings_are_honoured():
    defaults = parse_settings({"APPLICATION_ID": "x"})
    assert (defaults.batch_size, defaults.event_batch_timeout, defaults.flush_concurrency) == (100, 1.0, 4)
    custom = parse_settings({"APPLICATION_ID": "x", "BATCH_SIZE": 25, "EVENT_BATCH_TIMEOUT": 0, "EVENT_WORKER_COUNT": 2})
    assert (custom.batch_size, custom.event_batch_timeout, custom.flush_concurrency) == (25, 0.0, 2)
