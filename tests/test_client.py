from __future__ import annotations

import gzip
import json
import subprocess
import sys
from importlib.metadata import version
from typing import Callable

import httpx
import pytest

from moesifasgi_flush.client import (
    AUTH,
    DEFAULT_TIMEOUT,
    OK,
    REJECT,
    RETRY,
    TOO_LARGE,
    MoesifClient,
    PostResult,
    classify_status,
)

BASE = "http://collector.test"
# Rows exactly as the queue stores them; the odd spacing and the float "1.0" would
# not survive a json.loads/json.dumps round trip, so they prove the rows are joined as text.
ROWS = [
    '{"transaction_id": "a1", "request": {"uri": "/caf\u00e9"}, "weight":  1.0}',
    '{"transaction_id":"a2","body":"\U0001f600 snow \u2603"}',
    '{"transaction_id":"a3"}',
]


def make_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs) -> MoesifClient:
    return MoesifClient("app-123", BASE + "/", transport=httpx.MockTransport(handler), **kwargs)


class Recorder:
    """A MockTransport handler that remembers requests and answers as told."""

    def __init__(self, status: int = 201, headers: dict | None = None, body: bytes = b"{}"):
        self.status, self.headers, self.body = status, headers or {}, body
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return httpx.Response(self.status, headers=self.headers, content=self.body)


async def test_body_is_the_gzip_of_exactly_the_rows_joined_as_an_array() -> None:
    recorder = Recorder()
    async with make_client(recorder) as client:
        result = await client.post_events(ROWS)
    assert result == PostResult(OK, status=201)
    sent = recorder.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == "http://collector.test/v1/events/batch"
    raw = gzip.decompress(sent.content)
    assert raw == ("[" + ",".join(ROWS) + "]").encode("utf-8")
    assert [e["transaction_id"] for e in json.loads(raw)] == ["a1", "a2", "a3"]


async def test_identical_batches_compress_to_identical_bytes() -> None:
    recorder = Recorder()
    async with make_client(recorder) as client:
        await client.post_events(ROWS)
        await client.post_events(ROWS)
    assert recorder.requests[0].content == recorder.requests[1].content
    assert recorder.requests[0].content[4:8] == b"\x00\x00\x00\x00"  # gzip mtime field


async def test_a_batch_over_a_megabyte_is_sent_intact() -> None:
    rows = [json.dumps({"transaction_id": str(i), "pad": "x" * 2000 + str(i)}) for i in range(600)]
    recorder = Recorder()
    async with make_client(recorder) as client:
        result = await client.post_events(rows)
    assert result.outcome == OK
    assert gzip.decompress(recorder.requests[0].content) == ("[" + ",".join(rows) + "]").encode()


async def test_posts_carry_the_moesif_headers_and_the_real_version() -> None:
    recorder = Recorder()
    async with make_client(recorder) as client:
        await client.post_events(ROWS)
    headers = recorder.requests[0].headers
    assert headers["X-Moesif-Application-Id"] == "app-123"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Content-Encoding"] == "gzip"
    assert headers["User-Agent"] == f"moesifasgi-python/{version('moesifasgi')}"
    assert "None" not in headers["User-Agent"]
    assert headers["Content-Length"] == str(len(recorder.requests[0].content))


async def test_users_and_companies_go_to_their_batch_endpoints() -> None:
    recorder = Recorder()
    async with make_client(recorder) as client:
        await client.post_users(['{"user_id":"u1"}'])
        await client.post_companies(['{"company_id":"c1"}'])
        await client.post_batch("v1/actions/batch", ['{"action_name":"x"}'])
    assert [r.url.path for r in recorder.requests] == [
        "/v1/users/batch",
        "/v1/companies/batch",
        "/v1/actions/batch",
    ]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, OK), (201, OK), (202, OK), (204, OK),
        (408, RETRY), (429, RETRY), (500, RETRY), (502, RETRY), (503, RETRY), (504, RETRY),
        (401, AUTH), (402, AUTH), (403, AUTH),
        (413, TOO_LARGE),
        (400, REJECT), (404, REJECT), (405, REJECT), (406, REJECT), (410, REJECT), (422, REJECT),
    ],
)
async def test_each_status_class_maps_to_its_outcome(status: int, outcome: str) -> None:
    async with make_client(Recorder(status=status, body=b"")) as client:
        result = await client.post_events(ROWS)
    assert result.outcome == outcome
    assert result.status == status
    assert classify_status(status) == outcome
    assert (result.error is None) == (outcome == OK)


async def test_an_error_result_names_the_status_and_the_start_of_the_body() -> None:
    body = ("overloaded " * 100).encode()
    async with make_client(Recorder(status=503, body=body)) as client:
        result = await client.post_events(ROWS)
    assert result.error is not None
    assert result.error.startswith("HTTP 503: overloaded overloaded")
    assert len(result.error) <= len("HTTP 503: ") + 200


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("0.25", 0.25), ("garbage", None)])
async def test_retry_after_is_parsed_on_throttling(header: str, expected: float | None) -> None:
    async with make_client(Recorder(status=429, headers={"Retry-After": header})) as client:
        result = await client.post_events(ROWS)
    assert result.outcome == RETRY
    assert result.retry_after == expected


async def test_retry_after_as_a_date_becomes_seconds_to_wait() -> None:
    headers = {"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"}
    async with make_client(Recorder(status=503, headers=headers)) as client:
        result = await client.post_events(ROWS)
    assert result.retry_after is not None and result.retry_after > 365 * 24 * 3600


async def test_no_retry_after_header_means_none() -> None:
    async with make_client(Recorder(status=503)) as client:
        result = await client.post_events(ROWS)
    assert result.retry_after is None


async def test_config_etag_of_the_response_is_surfaced() -> None:
    recorder = Recorder(headers={"X-Moesif-Config-ETag": "etag-42"})
    async with make_client(recorder) as client:
        result = await client.post_events(ROWS)
    assert result.config_etag == "etag-42"


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (httpx.ConnectError("connection refused"), "ConnectError"),
        (httpx.ReadTimeout("timed out"), "ReadTimeout"),
        (httpx.RemoteProtocolError("peer closed"), "RemoteProtocolError"),
    ],
)
async def test_transport_failures_are_retry_results_not_exceptions(
    exc: Exception, name: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    async with make_client(handler) as client:
        result = await client.post_events(ROWS)
    assert result.outcome == RETRY
    assert result.status is None
    assert result.error is not None and result.error.startswith(name + ":")


async def test_a_refused_port_on_loopback_is_a_retry() -> None:
    import socket

    with socket.socket() as sock:  # bind then close: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with MoesifClient("app", f"http://127.0.0.1:{port}", timeout=2.0) as client:
        result = await client.post_events(ROWS)
    assert result.outcome == RETRY
    assert result.error is not None and "ConnectError" in result.error


def test_the_default_timeout_connects_fast_and_reads_slowly() -> None:
    assert DEFAULT_TIMEOUT.connect == 5.0
    assert DEFAULT_TIMEOUT.read == 30.0


def test_an_empty_application_id_is_refused() -> None:
    with pytest.raises(ValueError):
        MoesifClient("")


async def test_get_config_returns_parsed_json_and_the_etag() -> None:
    config = {"sample_rate": 40, "user_sample_rate": {"u1": 10}}
    recorder = Recorder(
        status=200, headers={"X-Moesif-Config-ETag": "cfg-1"}, body=json.dumps(config).encode()
    )
    async with make_client(recorder) as client:
        result = await client.get_config()
    assert result.ok
    assert (result.status, result.data, result.etag, result.error) == (200, config, "cfg-1", None)
    sent = recorder.requests[0]
    assert (sent.method, str(sent.url)) == ("GET", "http://collector.test/v1/config")
    assert sent.headers["X-Moesif-Application-Id"] == "app-123"


async def test_get_rules_returns_the_list() -> None:
    rules = [{"_id": "r1", "type": "regex", "block": True}]
    async with make_client(Recorder(status=200, body=json.dumps(rules).encode())) as client:
        result = await client.get_rules()
    assert result.data == rules


async def test_a_non_json_config_body_is_an_error_not_an_exception() -> None:
    recorder = Recorder(status=200, body=b"<html>gateway</html>")
    async with make_client(recorder) as client:
        result = await client.get_config()
    assert not result.ok
    assert result.status == 200 and result.data is None
    assert result.error is not None and result.error.startswith("invalid JSON")


async def test_a_failed_config_fetch_reports_status_and_body() -> None:
    async with make_client(Recorder(status=500, body=b"boom")) as client:
        result = await client.get_config()
    assert (result.status, result.data, result.error) == (500, None, "HTTP 500: boom")


async def test_an_unreachable_config_endpoint_has_no_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow")

    async with make_client(handler) as client:
        result = await client.get_config()
    assert result.status is None and result.data is None
    assert result.error == "ConnectTimeout: slow"


_BODY_CHECK = """
import gzip, sys
{block}
from moesifasgi.delivery import client
body = client._gzip_body([b'{{"a": 1}}', b'{{"b": 2}}'])
assert gzip.decompress(body) == b'[{{"a": 1}},{{"b": 2}}]', body
assert body[:2] == b"\\x1f\\x8b" and body[4:8] == b"\\x00\\x00\\x00\\x00", body[:10]  # gzip, mtime 0
print(client.COMPRESSOR)
"""


def _compressor_used(block: str) -> str:
    out = subprocess.run([sys.executable, "-c", _BODY_CHECK.format(block=block)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_without_isal_bodies_are_gzipped_by_zlib_with_mtime_0_so_a_retry_sends_the_same_bytes() -> None:
    assert _compressor_used("sys.modules['isal'] = None") == "zlib"


def test_with_isal_installed_bodies_are_gzipped_by_it_in_the_same_format() -> None:
    pytest.importorskip("isal")
    assert _compressor_used("") == "isal"
