"""Outgoing capture of `httpx` calls (Client and AsyncClient), against real servers on 127.0.0.1."""
from __future__ import annotations

import asyncio
import base64
import functools
import gc
import sys
import threading
import time

import httpx
import pytest
import requests

from moesifasgi import outgoing
from moesifasgi_flush.client import MoesifClient
from moesifasgi.testing.local_collector import LocalCollector

from ._compat import close_client_with_a_stream_let_go
from .conftest import read_counter, read_events, read_problems
from .outgoing_support import capture, refused_url, target  # noqa: F401  (fixtures)


def decoded(body: str) -> bytes:
    return base64.b64decode(body)


def test_a_sync_client_call_becomes_an_outgoing_event(capture, target, queue_path):
    capture()
    with httpx.Client() as client:
        response = client.post(target.url + "/echo?x=1", json={"name": "ann"}, headers={"X-Trace": "t1"})
    assert response.json() == {"name": "ann"}
    [event] = read_events(queue_path)
    assert event["direction"] == "Outgoing"
    assert event["request"]["uri"] == target.url + "/echo?x=1"
    assert event["request"]["verb"] == "POST"
    assert event["request"]["headers"]["x-trace"] == "t1"
    assert event["request"]["body"] == {"name": "ann"}
    assert event["response"]["status"] == 200 and event["response"]["body"] == {"name": "ann"}
    assert event["response"]["time"] >= event["request"]["time"]


async def test_an_async_client_call_becomes_an_outgoing_event(capture, target, queue_path):
    capture()
    async with httpx.AsyncClient() as client:
        response = await client.put(target.url + "/echo", content=b"raw bytes")
    assert response.content == b"raw bytes"
    [event] = read_events(queue_path)
    assert event["request"]["verb"] == "PUT"
    assert decoded(event["request"]["body"]) == b"raw bytes"
    assert decoded(event["response"]["body"]) == b"raw bytes"


def test_module_level_helpers_are_captured(capture, target, queue_path):
    capture()
    httpx.get(target.url + "/json")
    with httpx.stream("GET", target.url + "/text") as response:
        response.read()
    assert [e["request"]["uri"] for e in read_events(queue_path)] == [target.url + "/json", target.url + "/text"]


async def test_4xx_and_5xx_responses_are_recorded_and_returned_as_they_were(capture, target, queue_path):
    capture()
    with httpx.Client() as client:
        assert client.get(target.url + "/status/404").status_code == 404
    async with httpx.AsyncClient() as client:
        response = await client.get(target.url + "/status/502")
    assert response.status_code == 502 and response.json() == {"status": 502}
    assert [e["response"]["status"] for e in read_events(queue_path)] == [404, 502]


async def test_a_refused_connection_is_recorded_with_status_0_and_still_raises_sync_and_async(capture, queue_path):
    capture()
    url = refused_url()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError) as raised:
            await client.get(url)
    events = read_events(queue_path)
    assert [e["response"]["status"] for e in events] == [0, 0]
    assert events[1]["request"]["uri"] == url and events[1]["response"]["headers"] == {}
    assert events[1]["response"]["body"] == {"error": {"type": "httpx.ConnectError", "message": str(raised.value)}}


async def test_the_exception_the_caller_gets_is_the_very_object_the_transport_raised(capture, queue_path):
    failure = httpx.ReadError("the transport says no")

    def handler(request):
        raise failure

    capture()
    with pytest.raises(httpx.ReadError) as raised:
        httpx.Client(transport=httpx.MockTransport(handler)).get("http://example.test/x")
    assert raised.value is failure
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(httpx.ReadError) as raised:
            await client.get("http://example.test/y")
    assert raised.value is failure
    assert [e["response"]["body"]["error"]["message"] for e in read_events(queue_path)] == ["the transport says no"] * 2


def test_a_timeout_is_recorded_and_still_reaches_the_caller(capture, target, queue_path):
    capture()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(target.url + "/slow?delay=0.5", timeout=0.05)
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 0
    assert event["response"]["body"]["error"]["type"] == "httpx.ReadTimeout"


async def test_a_cancelled_async_call_is_recorded_and_the_cancellation_goes_on(capture, target, queue_path):
    capture()
    async with httpx.AsyncClient() as client:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.get(target.url + "/slow?delay=0.5"), 0.05)
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 0
    assert event["response"]["body"]["error"]["type"] == "asyncio.exceptions.CancelledError"


def test_a_streamed_response_is_not_read_on_the_callers_behalf(capture, target, queue_path):
    capture()
    started = time.monotonic()
    consumed = b""
    with httpx.Client() as client, client.stream("GET", target.url + "/endless") as response:
        for chunk in response.iter_bytes():
            consumed += chunk
            if len(consumed) >= 3000:
                break
    assert time.monotonic() - started < 2, "the endless body was read eagerly"
    [event] = read_events(queue_path)
    assert decoded(event["response"]["body"]) == consumed


async def test_an_async_streamed_response_records_what_the_caller_read(capture, target, queue_path):
    capture()
    consumed = b""
    async with httpx.AsyncClient() as client:
        async with client.stream("GET", target.url + "/endless") as response:
            async for chunk in response.aiter_bytes():
                consumed += chunk
                if len(consumed) >= 3000:
                    break
        async with client.stream("GET", target.url + "/gzip") as response:
            assert await response.aread() != b""
    first, second = read_events(queue_path)
    assert decoded(first["response"]["body"]) == consumed
    assert second["response"]["body"] == {"zipped": True}  # read compressed, stored decoded


def test_a_streamed_response_read_to_the_end_is_recorded_whole(capture, target, queue_path):
    capture()
    with httpx.stream("GET", target.url + "/chunks?n=5&size=700") as response:
        body = b"".join(response.iter_raw())
    assert len(body) == 3500
    [event] = read_events(queue_path)
    assert decoded(event["response"]["body"]) == body


def test_a_streamed_response_closed_unread_is_recorded_without_a_body(capture, target, queue_path):
    capture()
    with httpx.stream("GET", target.url + "/chunks") as response:
        assert response.status_code == 200
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 200 and "body" not in event["response"]


def test_a_streamed_response_the_caller_lets_go_is_recorded_when_collected(capture, target, queue_path):
    seen = []
    capture(GET_METADATA_OUTGOING=lambda req, res: seen.append((type(res), res.status_code)) or {"k": 1})
    client = httpx.Client()
    response = client.send(client.build_request("GET", target.url + "/chunks"), stream=True)
    del response
    gc.collect()
    [event] = read_events(queue_path)
    assert event["metadata"] == {"k": 1} and seen == [(httpx.Response, 200)]
    close_client_with_a_stream_let_go(client)


async def test_every_redirect_hop_is_one_event(capture, target, queue_path):
    capture()
    with httpx.Client(follow_redirects=True) as client:
        response = client.get(target.url + "/redirect")
    assert response.json()["query"] == {"from": "redirect"} and len(response.history) == 1
    async with httpx.AsyncClient(follow_redirects=True) as client:
        await client.get(target.url + "/redirect")
    hops = [(e["request"]["uri"], e["response"]["status"]) for e in read_events(queue_path)]
    assert hops == [(target.url + "/redirect", 302), (target.url + "/json?from=redirect", 200)] * 2


def test_a_gzip_response_is_recorded_decoded(capture, target, queue_path):
    capture()
    assert httpx.get(target.url + "/gzip").json() == {"zipped": True}
    [event] = read_events(queue_path)
    assert event["response"]["body"] == {"zipped": True}


def test_log_body_outgoing_false_records_no_bodies(capture, target, queue_path):
    capture(LOG_BODY_OUTGOING=False)
    httpx.post(target.url + "/echo", json={"secret": 1})
    with httpx.stream("GET", target.url + "/chunks") as response:
        response.read()
    for event in read_events(queue_path):
        assert "body" not in event["request"] and "body" not in event["response"]


async def test_async_callbacks_receive_the_httpx_objects_and_are_awaited_on_the_callers_loop(capture, target, queue_path):
    loops, received = [], []

    async def identify_user(req, res):
        loops.append(asyncio.get_running_loop())
        received.append((type(req), type(res)))
        return req.headers["x-user"]

    async def mask(event):
        event.metadata = {**(event.metadata or {}), "masked": True}
        return event

    capture(
        IDENTIFY_USER_OUTGOING=identify_user,
        IDENTIFY_COMPANY_OUTGOING=lambda req, res: "acme",
        GET_SESSION_TOKEN_OUTGOING=lambda req, res: res.headers["content-type"],
        GET_METADATA_OUTGOING=lambda req, res: {"path": req.url.path},
        MASK_EVENT_MODEL=mask,
    )
    async with httpx.AsyncClient() as client:
        await client.get(target.url + "/json", headers={"X-User": "ann"})
    [event] = read_events(queue_path)  # recorded before the call returned
    assert loops == [asyncio.get_running_loop()]
    assert received == [(httpx.Request, httpx.Response)]
    assert (event["user_id"], event["company_id"], event["session_token"]) == ("ann", "acme", "application/json")
    assert event["metadata"] == {"path": "/json", "masked": True}


def test_async_callbacks_work_with_a_sync_client_in_a_thread(capture, target, queue_path):
    async def skip(req, res):
        return res.status_code == 404

    capture(SKIP_OUTGOING=skip)
    worker = threading.Thread(target=lambda: [httpx.get(target.url + p) for p in ("/status/404", "/json")])
    worker.start()
    worker.join()
    assert [e["request"]["uri"] for e in read_events(queue_path)] == [target.url + "/json"]


def test_a_failing_mask_records_a_minimal_event_and_never_fails_the_call(capture, target, queue_path):
    capture(MASK_EVENT_MODEL=lambda event: "not an event")
    assert httpx.get(target.url + "/json?secret=1").status_code == 200
    [event] = read_events(queue_path)
    assert event["request"]["uri"] == target.url + "/json" and event["request"]["headers"] == {}
    assert event["direction"] == "Outgoing" and "body" not in event["response"]
    assert read_problems(queue_path) == {"mask-failed": 1} and read_counter(queue_path, "dropped") == 0


async def test_the_flushers_posts_to_moesif_are_never_captured(capture, target, queue_path):
    with LocalCollector(application_id="app-id") as collector:
        # BASE_URI points elsewhere: the application id header alone must keep them out.
        capture(BASE_URI="https://collector.invalid")
        async with MoesifClient("app-id", collector.url) as client:
            assert (await client.post_events(['{"transaction_id": "t-1"}'])).ok
            assert (await client.get_config()).ok
        capture(BASE_URI=collector.url)
        httpx.post(collector.url + "/v1/events/batch", json=[{"transaction_id": "t-2"}])
        requests.post(collector.url + "/v1/events/batch", json=[{"transaction_id": "t-3"}])
        httpx.get(target.url + "/json")
        assert collector.event_count == 1
    assert [e["request"]["uri"] for e in read_events(queue_path)] == [target.url + "/json"]


def test_installing_twice_or_under_another_wrapper_never_captures_twice(capture, target, queue_path):
    capture()
    ours = httpx.Client.send

    @functools.wraps(ours)
    def theirs(self, request, **kwargs):  # a tracing library wrapping ours, as they do
        return ours(self, request, **kwargs)

    httpx.Client.send = theirs
    try:
        capture()
        capture()
        httpx.get(target.url + "/json")
        assert len(read_events(queue_path)) == 1
        outgoing.uninstall()  # cannot unwrap under theirs: turns ours off instead
        assert httpx.Client.send is theirs
        httpx.get(target.url + "/json")
        assert len(read_events(queue_path)) == 1
    finally:
        httpx.Client.send = ours
        outgoing.uninstall()


def test_the_callers_response_is_the_same_with_and_without_capture(capture, target):
    def snapshot():
        plain = httpx.get(target.url + "/gzip")
        with httpx.stream("GET", target.url + "/chunks?n=3&size=10") as streamed:
            chunks = list(streamed.iter_bytes())
            closed = streamed.is_closed
        return (type(plain), plain.status_code, plain.content, plain.json(), plain.http_version,
                [(k, v) for k, v in plain.headers.items() if k != "date"], chunks, closed)

    before = snapshot()
    capture()
    assert snapshot() == before


def test_requests_is_still_captured_when_httpx_is_missing(capture, target, queue_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)
    capture()
    requests.get(target.url + "/json")
    [event] = read_events(queue_path)
    assert event["request"]["headers"]["user-agent"].startswith("python-requests")
