from __future__ import annotations

import asyncio
import gzip
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from moesifasgi_flush.client import AUTH, OK, REJECT, RETRY, MoesifClient
from moesifasgi.testing.local_collector import DEFAULT_CONFIG, LocalCollector

APP_ID = "test-app-id"


def make_rows(n: int, **extra: object) -> list[str]:
    return [
        json.dumps({"transaction_id": str(uuid.uuid4()), "request": {"uri": f"/items/{i}"}, **extra})
        for i in range(n)
    ]


def ids_of(rows: list[str]) -> list[str]:
    return [json.loads(row)["transaction_id"] for row in rows]


@pytest.fixture
async def client(collector: LocalCollector) -> AsyncIterator[MoesifClient]:
    async with MoesifClient(APP_ID, collector.url, timeout=5.0) as real_client:
        yield real_client


def test_url_names_the_port_it_really_listens_on(collector: LocalCollector) -> None:
    assert collector.port != 0
    assert collector.url == f"http://127.0.0.1:{collector.port}"


async def test_posted_events_are_recorded_in_arrival_order(
    collector: LocalCollector, client: MoesifClient
) -> None:
    first, second = make_rows(3), make_rows(25)
    assert (await client.post_events(first)).outcome == OK
    result = await client.post_events(second)
    assert result.outcome == OK and result.status == 201
    assert collector.transaction_ids() == ids_of(first) + ids_of(second)
    assert collector.events[0]["request"] == {"uri": "/items/0"}
    assert collector.distinct_transaction_ids() == set(ids_of(first + second))
    assert collector.duplicates() == 0
    assert collector.requests == 2
    assert collector.request_log == [
        ("POST", "/v1/events/batch", 201, 3),
        ("POST", "/v1/events/batch", 201, 25),
    ]
    assert collector.header_errors == []


async def test_a_resent_batch_counts_as_duplicates(
    collector: LocalCollector, client: MoesifClient
) -> None:
    rows = make_rows(4)
    await client.post_events(rows)
    await client.post_events(rows[:3])
    assert collector.event_count == 7
    assert collector.duplicates() == 3
    assert len(collector.distinct_transaction_ids()) == 4


async def test_users_and_companies_are_recorded_apart_from_events(
    collector: LocalCollector, client: MoesifClient
) -> None:
    assert (await client.post_users(['{"user_id":"u1"}', '{"user_id":"u2"}'])).outcome == OK
    assert (await client.post_companies(['{"company_id":"c1"}'])).outcome == OK
    assert [u["user_id"] for u in collector.users] == ["u1", "u2"]
    assert collector.companies == [{"company_id": "c1"}]
    assert collector.events == []


async def test_a_wrong_application_id_gets_401_and_nothing_is_recorded(
    collector: LocalCollector,
) -> None:
    async with MoesifClient("someone-else", collector.url) as stranger:
        result = await stranger.post_events(make_rows(2))
    assert (result.outcome, result.status) == (AUTH, 401)
    assert collector.event_count == 0
    assert collector.header_errors == ["POST /v1/events/batch: bad X-Moesif-Application-Id"]


async def test_a_missing_application_id_gets_401_even_without_an_expected_one() -> None:
    with LocalCollector() as open_collector:
        async with httpx.AsyncClient() as raw:
            response = await raw.post(open_collector.url + "/v1/events", json={"a": 1})
        async with MoesifClient("any-id-works", open_collector.url) as client:
            accepted = await client.post_batch("/v1/events/batch", ['{"transaction_id":"t1"}'])
    assert response.status_code == 401
    assert accepted.outcome == OK
    assert open_collector.transaction_ids() == ["t1"]


async def test_wrong_headers_are_recorded_but_plain_json_is_accepted(
    collector: LocalCollector,
) -> None:
    body = json.dumps([{"transaction_id": "t1"}])
    async with httpx.AsyncClient(headers={"User-Agent": "moesifasgi-python/None"}) as raw:
        response = await raw.post(
            collector.url + "/v1/events/batch",
            content=body,
            headers={"X-Moesif-Application-Id": APP_ID, "Content-Type": "text/plain"},
        )
    assert response.status_code == 201
    assert collector.transaction_ids() == ["t1"]
    assert collector.header_errors == [
        "POST /v1/events/batch: Content-Type 'text/plain'",
        "POST /v1/events/batch: User-Agent 'moesifasgi-python/None'",
    ]


async def test_a_chunked_gzip_body_is_decoded(collector: LocalCollector) -> None:
    payload = gzip.compress(json.dumps([{"transaction_id": "c1"}, {"transaction_id": "c2"}]).encode())

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    headers = {
        "X-Moesif-Application-Id": APP_ID,
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    async with httpx.AsyncClient() as raw:
        response = await raw.post(collector.url + "/v1/events/batch", content=chunks(), headers=headers)
    assert response.status_code == 201
    assert collector.transaction_ids() == ["c1", "c2"]


async def test_an_undecodable_body_gets_400_and_is_noted(collector: LocalCollector) -> None:
    headers = {"X-Moesif-Application-Id": APP_ID, "Content-Type": "application/json",
               "Content-Encoding": "gzip"}
    async with httpx.AsyncClient() as raw:
        response = await raw.post(collector.url + "/v1/events/batch", content=b"not gzip", headers=headers)
        single = await raw.post(collector.url + "/v1/events/batch", json={"not": "an array"},
                                headers={"X-Moesif-Application-Id": APP_ID})
    assert (response.status_code, single.status_code) == (400, 400)
    assert len(collector.body_errors) == 2
    assert "undecodable body" in collector.body_errors[0]
    assert "array" in collector.body_errors[1]
    assert collector.event_count == 0


async def test_unknown_paths_and_wrong_methods_are_refused(
    collector: LocalCollector, client: MoesifClient
) -> None:
    missing = await client.post_batch("/v1/nowhere", ['{"a":1}'])
    wrong_method = await client.get_json("/v1/events/batch")
    assert (missing.outcome, missing.status) == (REJECT, 404)
    assert wrong_method.status == 405


async def test_fail_for_503_then_posts_recover(
    collector: LocalCollector, client: MoesifClient
) -> None:
    # A window long enough for two posts on a slow machine; then wait it out.
    window_ends = time.monotonic() + 2.0
    collector.fail_for(503, 2.0, headers={"Retry-After": "2"})
    rows = make_rows(5)
    failed = await client.post_events(rows)
    again = await client.post_events(rows)
    assert (failed.outcome, failed.status, failed.retry_after) == (RETRY, 503, 2.0)
    assert again.outcome == RETRY
    assert collector.event_count == 0
    await asyncio.sleep(max(0.0, window_ends - time.monotonic()) + 0.05)
    recovered = await client.post_events(rows)
    assert recovered.outcome == OK
    assert collector.transaction_ids() == ids_of(rows)


async def test_fail_next_fails_exactly_count_posts_and_leaves_config_alone(
    collector: LocalCollector, client: MoesifClient
) -> None:
    collector.fail_next(429, count=2, headers={"Retry-After": "1"})
    config = await client.get_config()  # GETs are not affected by default
    outcomes = [await client.post_events(make_rows(1)) for _ in range(3)]
    assert config.status == 200
    assert [(r.outcome, r.status, r.retry_after) for r in outcomes] == [
        (RETRY, 429, 1.0), (RETRY, 429, 1.0), (OK, 201, None)
    ]


async def test_faults_can_target_config_fetches(
    collector: LocalCollector, client: MoesifClient
) -> None:
    collector.fail_next(500, method="GET")
    assert (await client.post_events(make_rows(1))).outcome == OK
    assert (await client.get_config()).status == 500
    assert (await client.get_config()).status == 200


async def test_a_poisoned_event_rejects_its_batch_until_it_is_split_off(
    collector: LocalCollector, client: MoesifClient
) -> None:
    collector.reject_events_where(lambda event: event.get("poison") is True)
    good, bad = make_rows(3), make_rows(1, poison=True)
    whole = await client.post_events(good[:2] + bad + good[2:])
    left = await client.post_events(good[:2])
    right = await client.post_events(bad + good[2:])
    alone = await client.post_events(good[2:])
    assert (whole.outcome, whole.status) == (REJECT, 400)
    assert (left.outcome, right.outcome, alone.outcome) == (OK, REJECT, OK)
    assert collector.transaction_ids() == ids_of(good)
    collector.reset_faults()
    assert (await client.post_events(bad)).outcome == OK


async def test_a_slow_collector_makes_a_short_timeout_a_retry(collector: LocalCollector) -> None:
    collector.delay(0.5)
    async with MoesifClient(APP_ID, collector.url, timeout=0.1) as impatient:
        result = await impatient.post_events(make_rows(1))
    assert result.outcome == RETRY
    assert result.error is not None and result.error.startswith("ReadTimeout")


async def test_config_and_its_etag_change_together(
    collector: LocalCollector, client: MoesifClient
) -> None:
    before = await client.get_config()
    assert before.data == DEFAULT_CONFIG
    post_before = await client.post_events(make_rows(1))
    new_etag = collector.set_config({**DEFAULT_CONFIG, "sample_rate": 25})
    after = await client.get_config()
    post_after = await client.post_events(make_rows(1))
    assert before.etag == post_before.config_etag != new_etag
    assert after.data["sample_rate"] == 25
    assert after.etag == post_after.config_etag == new_etag


async def test_rules_are_served_as_set(collector: LocalCollector, client: MoesifClient) -> None:
    assert (await client.get_rules()).data == []
    collector.set_rules([{"_id": "r1", "type": "regex", "block": True}])
    assert (await client.get_rules()).data == [{"_id": "r1", "type": "regex", "block": True}]


async def test_wait_for_returns_when_enough_events_arrived(
    collector: LocalCollector, client: MoesifClient
) -> None:
    started = time.monotonic()
    assert collector.wait_for(1, timeout=0.1) is False
    assert time.monotonic() - started >= 0.09
    await client.post_events(make_rows(2))
    assert collector.wait_for(2, timeout=1.0) is True


async def test_a_stopped_collector_refuses_posts_and_restarts_on_the_same_port(
    collector: LocalCollector, client: MoesifClient
) -> None:
    assert (await client.post_events(make_rows(1))).outcome == OK  # opens a kept-alive connection
    port = collector.port
    collector.stop()
    down = await client.post_events(make_rows(1))
    collector.start()
    up = await client.post_events(make_rows(1))
    assert down.outcome == RETRY and down.status is None
    assert collector.port == port
    assert up.outcome == OK
    assert collector.event_count == 2


async def test_concurrent_posts_over_several_connections_are_all_recorded(
    collector: LocalCollector,
) -> None:
    batches = [make_rows(25) for _ in range(40)]
    async with MoesifClient(APP_ID, collector.url, max_connections=4) as client:
        results = await asyncio.gather(*(client.post_events(b) for b in batches))
    assert {r.outcome for r in results} == {OK}
    assert collector.distinct_transaction_ids() == {i for b in batches for i in ids_of(b)}
    assert collector.duplicates() == 0


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "collector printed nothing"
    return proc.stdout.readline()


async def test_module_mode_prints_its_url_records_to_a_file_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    record = tmp_path / "events.jsonl"
    record.write_text('{"transaction_id": "from-an-earlier-run"}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "moesifasgi.testing.local_collector", "--port", "0",
         "--record", str(record)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = _read_line(proc, timeout=60)
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        rows = make_rows(3)
        async with MoesifClient(APP_ID, url) as client:
            assert (await client.post_events(rows)).outcome == OK
        recorded = [json.loads(x)["transaction_id"] for x in record.read_text().splitlines()]
        assert recorded == ["from-an-earlier-run"] + ids_of(rows)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
