from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace

import httpx
import pytest

from moesifasgi import storage
from moesifasgi_flush import queue_store as qs
from moesifasgi_flush.flusher import Flusher
from tests.flush_support import APP_ID, FAST, PATIENCE, eventually, insert_events, query, wait_until


def flusher_for(path, base_uri, **changes):
    transport = changes.pop("transport", None)
    return Flusher(path, APP_ID, base_uri, replace(FAST, **changes), transport=transport)


def pending(path):
    return query(path, "SELECT value FROM counters WHERE name = 'pending'")[0][0]


def kv(path, key):
    rows = query(path, "SELECT value FROM kv WHERE key = ?", key)
    return rows[0][0] if rows else None


def event_posts(collector, status=None):
    return [r for r in collector.request_log if r[1] == "/v1/events/batch" and (status is None or r[2] == status)]


async def test_a_backlog_is_posted_once_per_event_and_then_deleted(path, collector):
    tids = insert_events(path, 205)
    flusher = flusher_for(path, collector.url)
    stats = await flusher.drain()
    await flusher.aclose()
    assert (stats.sent, stats.failed, stats.remaining, stats.error) == (205, 0, 0, None)
    assert collector.transaction_ids() and collector.distinct_transaction_ids() == set(tids)
    assert collector.duplicates() == 0 and collector.header_errors == []
    assert max(r[3] for r in event_posts(collector)) == FAST.batch_size
    assert pending(path) == 0
    assert query(path, "SELECT value FROM counters WHERE name = 'sent'") == [(205,)]
    assert float(kv(path, qs.KV_LAST_SUCCESS)) == pytest.approx(time.time(), abs=10)


async def test_an_outage_of_several_seconds_loses_nothing_and_the_backlog_drains_after_it(path, collector):
    tids = insert_events(path, 150)
    collector.stop()  # connection refused
    flusher = flusher_for(path, collector.url)
    task = asyncio.ensure_future(flusher.run())
    assert await eventually(lambda: kv(path, qs.KV_LAST_ERROR) is not None)  # met the refused connection
    collector.fail_for(503, 3600)  # then the collector answers, but with errors
    collector.start()
    assert await eventually(lambda: any(r[2] == 503 for r in collector.request_log))
    await asyncio.sleep(0.5)  # several retries (backoff_max is 0.2 s), all answered 503
    assert collector.event_count == 0 and pending(path) == 150
    assert json.loads(kv(path, qs.KV_LAST_ERROR))["outcome"] == "retry"
    collector.reset_faults()
    assert await eventually(lambda: pending(path) == 0)
    await flusher.stop()
    await task
    assert collector.distinct_transaction_ids() == set(tids)
    assert event_posts(collector, 503)


async def test_a_429_retry_after_is_honoured_before_posting_again(path, collector):
    insert_events(path, 20)
    collector.fail_next(429, 1, {"Retry-After": "1"})
    flusher = flusher_for(path, collector.url, concurrency=1)
    started = time.monotonic()
    stats = await flusher.drain()
    await flusher.aclose()
    # The backoff alone would wait at most 0.2 s (FAST.backoff_max).
    assert time.monotonic() - started >= 1.0
    assert stats.sent == 20 and stats.remaining == 0
    assert [r[2] for r in event_posts(collector)][:2] == [429, 201]


async def test_a_401_stops_sending_keeps_the_events_and_logs_one_clear_error(path, collector, caplog):
    insert_events(path, 30)
    collector.fail_for(401, 30)
    flusher = flusher_for(path, collector.url)
    with caplog.at_level(logging.ERROR, logger="moesifasgi.delivery"):
        stats = await flusher.drain(max_seconds=5)
    await flusher.aclose()
    assert (stats.sent, stats.remaining, stats.error) == (0, 30, "auth")
    assert len(event_posts(collector)) <= FAST.concurrency
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "APPLICATION_ID" in errors[0].getMessage()
    assert query(path, "SELECT COUNT(*) FROM dead_letters") == [(0,)]


async def test_after_a_401_the_flusher_probes_again_later_and_then_drains(path, collector):
    tids = insert_events(path, 30)
    collector.fail_for(401, 1.2)
    flusher = flusher_for(path, collector.url, auth_probe_interval=0.5)
    task = asyncio.ensure_future(flusher.run())
    assert await eventually(lambda: pending(path) == 0)
    await flusher.stop()
    await task
    assert collector.distinct_transaction_ids() == set(tids)
    # One probe round per interval, not a post per idle tick.
    assert 1 <= len(event_posts(collector, 401)) <= 4 * FAST.concurrency


async def test_a_400_isolates_the_bad_events_into_dead_letters_and_requeue_sends_them(path, collector):
    tids = insert_events(path, 25)
    bad = {tids[3], tids[17]}
    collector.reject_events_where(lambda e: e.get("transaction_id") in bad)
    flusher = flusher_for(path, collector.url, batch_size=25)
    stats = await flusher.drain()
    assert (stats.sent, stats.dead_lettered, stats.failed, stats.remaining) == (23, 2, 2, 0)
    assert collector.distinct_transaction_ids() == set(tids) - bad and collector.duplicates() == 0
    letters = query(path, "SELECT transaction_id, status, reason FROM dead_letters ORDER BY id")
    assert [(t, s) for t, s, _ in letters] == [(tids[3], 400), (tids[17], 400)]
    assert all("400" in reason for _, _, reason in letters)

    collector.reject_events_where(None)
    conn = storage.connect(path)
    assert qs.requeue_dead_letters(conn) == 2
    conn.close()
    stats = await flusher.drain()
    await flusher.aclose()
    assert stats.sent == 2 and collector.distinct_transaction_ids() == set(tids)


async def test_events_older_than_30_days_go_to_dead_letters_without_being_posted(path, collector):
    old = insert_events(path, 3, created_at=time.time() - 31 * 24 * 3600)
    fresh = insert_events(path, 2)
    flusher = flusher_for(path, collector.url)
    stats = await flusher.drain()
    await flusher.aclose()
    assert (stats.sent, stats.dead_lettered, stats.remaining) == (2, 3, 0)
    assert collector.distinct_transaction_ids() == set(fresh)
    letters = query(path, "SELECT transaction_id, status, reason FROM dead_letters ORDER BY id")
    assert [t for t, _, _ in letters] == old and all("30 days" in r for _, _, r in letters)


async def test_the_config_and_rules_are_stored_and_a_new_etag_triggers_a_refetch(path, collector):
    collector.set_config({"sample_rate": 40, "user_sample_rate": {}})
    collector.set_rules([{"_id": "r1", "type": "regex", "block": False}])
    flusher = flusher_for(path, collector.url)  # config_interval stays 60 s
    task = asyncio.ensure_future(flusher.run())
    assert await eventually(lambda: kv(path, qs.KV_CONFIG) is not None)
    assert json.loads(kv(path, qs.KV_CONFIG))["sample_rate"] == 40
    assert json.loads(kv(path, qs.KV_RULES)) == [{"_id": "r1", "type": "regex", "block": False}]
    assert kv(path, qs.KV_CONFIG_ETAG) == collector.config_etag

    new_etag = collector.set_config({"sample_rate": 10})
    insert_events(path, 3)  # the post's answer carries the new ETag
    assert await eventually(lambda: kv(path, qs.KV_CONFIG_ETAG) == new_etag)
    assert json.loads(kv(path, qs.KV_CONFIG)) == {"sample_rate": 10}
    await flusher.stop()
    await task
    assert len([r for r in collector.request_log if r[1] == "/v1/config"]) == 2


async def test_stopping_releases_in_flight_claims_and_the_lease_within_the_deadline(path, collector):
    insert_events(path, 40)
    collector.delay(3)
    flusher = flusher_for(path, collector.url)
    task = asyncio.ensure_future(flusher.run())
    assert await eventually(lambda: query(path, "SELECT COUNT(*) FROM events WHERE claimed_by IS NOT NULL")[0][0] > 0)
    started = time.monotonic()
    await flusher.stop(timeout=1.0)
    await task
    assert time.monotonic() - started < 2.0
    assert query(path, "SELECT COUNT(*) FROM events WHERE claimed_by IS NOT NULL") == [(0,)]
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]
    collector.delay(0)


async def test_a_flusher_that_loses_its_lease_stops_draining(path, collector):
    flusher = flusher_for(path, collector.url)
    task = asyncio.ensure_future(flusher.run())
    assert await eventually(lambda: flusher.is_leader)
    conn = storage.connect(path)
    conn.execute("UPDATE leases SET owner = 'elsewhere:1:x', expires_at = ?", (time.time() + 60,))
    conn.close()
    assert await eventually(lambda: not flusher.is_leader)
    insert_events(path, 5)
    await asyncio.sleep(0.5)
    assert pending(path) == 5 and collector.event_count == 0
    await flusher.stop()
    await task


async def test_connection_errors_and_5xx_are_retried_until_the_batch_is_accepted(path):
    answers = ["connect", 503, 502, 201]
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        seen.append(answer)
        if answer == "connect":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(answer)

    insert_events(path, 5)
    flusher = flusher_for(path, "http://moesif.test", transport=httpx.MockTransport(handler), concurrency=1)
    stats = await flusher.drain(max_seconds=10)
    await flusher.aclose()
    assert seen == ["connect", 503, 502, 201] and stats.sent == 5 and stats.remaining == 0


async def test_a_404_from_a_wrong_base_uri_keeps_the_events_instead_of_dead_lettering_them(path):
    insert_events(path, 5)
    transport = httpx.MockTransport(lambda request: httpx.Response(404))
    flusher = flusher_for(path, "http://moesif.test", transport=transport)
    stats = await flusher.drain(max_seconds=0.5)
    await flusher.aclose()
    assert (stats.sent, stats.dead_lettered, stats.remaining) == (0, 0, 5)
    assert stats.error in ("reject", "deadline")
    assert query(path, "SELECT COUNT(*) FROM dead_letters") == [(0,)]


async def test_force_flush_reports_whether_the_queue_is_empty(path, collector):
    insert_events(path, 12)
    flusher = flusher_for(path, collector.url)
    assert await flusher.force_flush(timeout=5) is True
    collector.fail_for(503, 10)
    insert_events(path, 3)
    assert await flusher.force_flush(timeout=0.5) is False
    await flusher.aclose()


async def test_a_profile_is_delivered_during_an_event_backlog_not_after_it(path, collector):
    # 400 events posted one per batch, each answer 20 ms late: seconds of backlog
    # (more on a slow machine). Under steady traffic a backlog may never end, so
    # the profile must not wait for the queue of events to be empty.
    from moesifasgi import profiles

    insert_events(path, 400)
    assert profiles.update_user({"user_id": "u-1"}, queue_path=path).result(PATIENCE) == 1
    collector.delay(0.02)
    flusher = flusher_for(path, collector.url, batch_size=1)
    task = asyncio.ensure_future(flusher.run())
    try:
        assert await asyncio.to_thread(wait_until, lambda: collector.users)
        events_when_profile_arrived = collector.event_count
    finally:
        collector.delay(0)
        await flusher.stop(3)
        await asyncio.gather(task, return_exceptions=True)
    assert [u["user_id"] for u in collector.users] == ["u-1"]
    assert events_when_profile_arrived < 400


async def test_the_leader_delivers_queued_user_and_company_profiles_too(path, collector):
    from moesifasgi import profiles

    insert_events(path, 3)
    profiles.update_user({"user_id": "u-1", "metadata": {"plan": "pro"}}, queue_path=path).result(PATIENCE)
    profiles.update_company({"company_id": "c-1"}, queue_path=path).result(PATIENCE)
    flusher = flusher_for(path, collector.url)
    task = asyncio.ensure_future(flusher.run())
    try:
        assert await asyncio.to_thread(
            wait_until, lambda: collector.users and collector.companies and collector.event_count >= 3)
    finally:
        await flusher.stop(3)
        await asyncio.gather(task, return_exceptions=True)
    assert [u["user_id"] for u in collector.users] == ["u-1"]
    assert [c["company_id"] for c in collector.companies] == ["c-1"]
    assert query(path, "SELECT COUNT(*) FROM profiles") == [(0,)]


async def test_a_failed_profile_post_pauses_event_delivery_through_the_same_backoff(path, collector):
    from moesifasgi import profiles
    from moesifasgi.delivery.client import RETRY

    profiles.update_user({"user_id": "u-1"}, queue_path=path).result(10)
    collector.fail_next(503)  # the profiles' post: the only post while no event is queued
    flusher = flusher_for(path, collector.url)
    task = asyncio.ensure_future(flusher.run())
    try:
        assert await asyncio.to_thread(wait_until, lambda: flusher.delivery.failures[RETRY] == 1, 10)
        # The events' pause was set (the event workers wait for it too; on a
        # loaded box it may be over already, so its length is not checked).
        assert flusher.delivery.paused_until > 0 and flusher.delivery.errors == 1
        insert_events(path, 2)
        # After the pause, one loop delivers both.
        assert await asyncio.to_thread(wait_until, lambda: collector.users and collector.event_count >= 2, 20)
    finally:
        await flusher.stop(3)
        await asyncio.gather(task, return_exceptions=True)
    assert [u["user_id"] for u in collector.users] == ["u-1"]
    posts = [(p, status) for _, p, status, _ in collector.request_log if p.endswith("/batch")]
    assert posts[0] == ("/v1/users/batch", 503)
    assert [status < 300 for p, status in posts[1:] if p == "/v1/users/batch"] == [True]
    assert flusher.delivery.errors == 0  # a success (events' or profiles') ended the episode


@pytest.mark.parametrize("events_post_delay", [0.0, 0.5], ids=["events-posted-at-once", "events-post-slow"])
async def test_a_drain_delivers_the_events_and_then_the_profiles(path, collector, events_post_delay):
    # With the events' post made slow, the other workers find no event to claim
    # while one posts them: they must not send the profiles ahead of it.
    from moesifasgi import profiles

    handle = collector.handle

    def delayed_events(method, route, headers, body):
        if route.startswith("/v1/events/batch"):
            time.sleep(events_post_delay)
        return handle(method, route, headers, body)

    collector.handle = delayed_events
    insert_events(path, 3)
    profiles.update_company({"company_id": "c-1"}, queue_path=path).result(10)
    flusher = flusher_for(path, collector.url)
    stats = await flusher.drain(10)
    await flusher.aclose()
    assert (stats.sent, stats.remaining, stats.error) == (3, 0, None)
    assert [p for _, p, _, _ in collector.request_log if p.endswith("/batch")] == [
        "/v1/events/batch", "/v1/companies/batch"]
    assert query(path, "SELECT COUNT(*) FROM profiles") == [(0,)]
