"""Outgoing capture of `requests` calls against a real server on 127.0.0.1: events, errors, streaming."""
from __future__ import annotations

import base64
import gc
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from requests.adapters import HTTPAdapter

from .conftest import read_events
from .outgoing_support import capture, refused_url, target  # noqa: F401  (fixtures)

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")


def decoded(body: str) -> bytes:
    return base64.b64decode(body)


def test_a_requests_call_becomes_an_outgoing_event_with_the_full_url_bodies_and_times(capture, target, queue_path):
    capture(API_VERSION="2.1")
    response = requests.post(target.url + "/echo?verbose=1", json={"name": "ann"}, headers={"X-Trace": "t1"})
    assert response.json() == {"name": "ann"}

    [event] = read_events(queue_path)
    request, resp = event["request"], event["response"]
    assert event["direction"] == "Outgoing"
    assert request["uri"] == target.url + "/echo?verbose=1"
    assert request["verb"] == "POST"
    assert request["api_version"] == "2.1"
    assert request["headers"]["x-trace"] == "t1"
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == {"name": "ann"} and request["transfer_encoding"] == "json"
    assert resp["status"] == 200
    assert resp["body"] == {"name": "ann"} and resp["transfer_encoding"] == "json"
    assert resp["headers"]["content-type"] == "application/json"
    assert TIME.match(request["time"]) and TIME.match(resp["time"]) and resp["time"] >= request["time"]
    assert event["weight"] == 1
    assert re.match(r"^[0-9a-f-]{36}$", event["transaction_id"])
    assert "ip_address" not in request


def test_module_level_helpers_and_sessions_are_all_captured(capture, target, queue_path):
    capture()
    requests.get(target.url + "/json")
    requests.request("PUT", target.url + "/echo", data=b"raw")
    with requests.Session() as session:
        session.get(target.url + "/text")
    uris = [(e["request"]["verb"], e["request"]["uri"]) for e in read_events(queue_path)]
    assert uris == [("GET", target.url + "/json"), ("PUT", target.url + "/echo"), ("GET", target.url + "/text")]


def test_4xx_and_5xx_responses_are_recorded_and_reach_the_caller_as_they_were(capture, target, queue_path):
    capture()
    for code in (404, 422, 500, 503):
        response = requests.get(f"{target.url}/status/{code}")
        assert response.status_code == code and response.json() == {"status": code}
    events = read_events(queue_path)
    assert [e["response"]["status"] for e in events] == [404, 422, 500, 503]
    assert events[2]["response"]["body"] == {"status": 500}


def test_a_refused_connection_is_recorded_with_status_0_and_the_error_and_still_raises(capture, queue_path):
    capture()
    url = refused_url()
    with pytest.raises(requests.ConnectionError) as raised:
        requests.get(url, timeout=2)
    [event] = read_events(queue_path)
    assert event["request"]["uri"] == url
    assert event["response"]["status"] == 0
    assert event["response"]["headers"] == {}
    assert event["response"]["transfer_encoding"] == "json"
    error = event["response"]["body"]["error"]
    assert error["type"] == "requests.exceptions.ConnectionError"
    assert error["message"] == str(raised.value)


def test_the_exception_the_caller_gets_is_the_very_object_the_library_raised(capture, queue_path):
    failure = requests.ConnectionError("the adapter says no")

    class FailingAdapter(HTTPAdapter):
        def send(self, request, **kwargs):
            raise failure

    capture()
    session = requests.Session()
    session.mount("http://", FailingAdapter())
    with pytest.raises(requests.ConnectionError) as raised:
        session.get("http://127.0.0.1:1/x")
    assert raised.value is failure
    [event] = read_events(queue_path)
    assert event["response"]["body"]["error"]["message"] == "the adapter says no"


def test_a_timeout_is_recorded_and_still_reaches_the_caller(capture, target, queue_path):
    capture()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(target.url + "/slow?delay=0.5", timeout=0.05)
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 0
    assert event["response"]["body"]["error"]["type"] == "requests.exceptions.ReadTimeout"


def test_a_streamed_response_is_not_read_on_the_callers_behalf(capture, target, queue_path):
    capture()
    started = time.monotonic()
    with requests.get(target.url + "/endless", stream=True, timeout=5) as response:
        chunks = response.iter_content(1024)
        consumed = b"".join(next(chunks) for _ in range(3))
    assert time.monotonic() - started < 2, "the endless body was read eagerly"
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 200
    assert decoded(event["response"]["body"]) == consumed == b"y" * 3072


def test_a_streamed_response_read_to_the_end_is_recorded_whole(capture, target, queue_path):
    capture()
    response = requests.get(target.url + "/chunks?n=4&size=1000", stream=True)
    received = b"".join(response.iter_content(300))
    assert len(received) == 4000
    [event] = read_events(queue_path)
    assert decoded(event["response"]["body"]) == received


def test_json_text_and_iter_lines_on_a_streamed_response_are_captured(capture, target, queue_path):
    capture()
    assert requests.get(target.url + "/json", stream=True).json() == {"ok": True, "query": {}}
    assert requests.get(target.url + "/text", stream=True).text == "plain text, not json"
    lines = list(requests.get(target.url + "/text", stream=True).iter_lines(decode_unicode=True))
    assert lines == ["plain text, not json"]
    events = read_events(queue_path)
    assert events[0]["response"]["body"] == {"ok": True, "query": {}}
    assert decoded(events[1]["response"]["body"]) == b"plain text, not json"
    assert decoded(events[2]["response"]["body"]) == b"plain text, not json"


def test_a_streamed_response_closed_unread_is_recorded_without_a_body(capture, target, queue_path):
    capture()
    with requests.get(target.url + "/chunks", stream=True) as response:
        assert response.status_code == 200
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 200 and "body" not in event["response"]


def test_a_streamed_response_the_caller_lets_go_is_recorded_when_collected(capture, target, queue_path):
    seen = []
    capture(GET_METADATA_OUTGOING=lambda req, res: seen.append((type(res), res.status_code)) or {"k": 1})
    response = requests.get(target.url + "/chunks", stream=True)
    assert response.status_code == 200
    del response
    gc.collect()
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 200 and event["metadata"] == {"k": 1}
    assert seen == [(requests.Response, 200)]


def test_every_redirect_hop_is_one_event_and_the_history_is_untouched(capture, target, queue_path):
    capture()
    response = requests.get(target.url + "/redirect")
    assert response.json() == {"ok": True, "query": {"from": "redirect"}}
    assert [r.status_code for r in response.history] == [302]
    streamed = requests.get(target.url + "/redirect", stream=True)
    assert streamed.json()["query"] == {"from": "redirect"}
    events = sorted(read_events(queue_path), key=lambda e: e["request"]["time"])
    hops = sorted((e["request"]["uri"], e["response"]["status"]) for e in events)
    assert hops == sorted([(target.url + "/redirect", 302), (target.url + "/json?from=redirect", 200)] * 2)


def test_a_gzip_response_is_recorded_decoded(capture, target, queue_path):
    capture()
    assert requests.get(target.url + "/gzip").json() == {"zipped": True}
    [event] = read_events(queue_path)
    assert event["response"]["body"] == {"zipped": True}
    assert event["response"]["headers"]["content-encoding"] == "gzip"


def test_bodies_over_the_cap_are_truncated_as_for_incoming_calls(capture, target, queue_path):
    capture(MAX_BODY_BYTES=1000)
    response = requests.post(target.url + "/echo", data=b"z" * 5000, headers={"Content-Type": "text/plain"})
    assert response.content == b"z" * 5000
    [event] = read_events(queue_path)
    for part in ("request", "response"):
        body = decoded(event[part]["body"])
        assert body.startswith(b"z" * 1000)
        assert body.endswith(b"[moesifasgi: body truncated after 1000 bytes; 5000 bytes were sent]")


def test_a_multipart_upload_is_summarised_and_a_streamed_upload_is_not_read(capture, target, queue_path):
    capture()
    requests.post(target.url + "/echo", data={"name": "ann"}, files={"doc": ("cv.pdf", b"%PDF...")})
    requests.post(target.url + "/echo", data=(piece for piece in [b"ab", b"cd"]))
    first, second = read_events(queue_path)
    assert first["request"]["body"] == {"name": "ann", "doc": "cv.pdf"}
    assert "body" not in second["request"]
    assert decoded(second["response"]["body"]) == b"abcd"


def test_log_body_outgoing_false_records_no_bodies(capture, target, queue_path):
    capture(LOG_BODY_OUTGOING=False)
    requests.post(target.url + "/echo", json={"secret": 1})
    requests.get(target.url + "/chunks", stream=True).content
    for event in read_events(queue_path):
        assert "body" not in event["request"] and "body" not in event["response"]


def test_calls_from_many_threads_are_all_captured(capture, target, queue_path):
    capture()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: requests.get(f"{target.url}/json?i={i}").status_code, range(24)))
    assert results == [200] * 24
    uris = sorted(e["request"]["uri"] for e in read_events(queue_path))
    assert uris == sorted(f"{target.url}/json?i={i}" for i in range(24))


def test_the_callers_response_is_the_same_with_and_without_capture(capture, target):
    def snapshot():
        plain = requests.get(target.url + "/gzip")
        streamed = requests.get(target.url + "/chunks?n=3&size=10", stream=True)
        return (type(plain), plain.status_code, plain.content, plain.json(), plain.encoding,
                {k: v for k, v in plain.headers.items() if k != "Date"},
                list(streamed.iter_content(7)), streamed.raw.__class__)

    before = snapshot()
    capture()
    assert snapshot() == before
