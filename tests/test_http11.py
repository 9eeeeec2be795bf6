"""The small HTTP/1.1 poster behind MoesifClient's batch posts, against real
loopback servers that answer the way a collector or a proxy in front of it may."""
from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
from typing import Awaitable, Callable, List

import httpx
import pytest

from moesifasgi.delivery.client import OK, REJECT, RETRY, MoesifClient
from moesifasgi.delivery.http11 import Http11Poster, PostFailed

ROWS = ['{"transaction_id": "a"}', '{"transaction_id": "b"}']
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


async def serve(handler: Handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_a_post_carries_the_gzipped_array_and_the_headers_moesif_needs() -> None:
    seen: List[tuple] = []

    async def handler(reader, writer):
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nX-Moesif-Config-ETag: e1\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await serve(handler)
    async with server:
        async with MoesifClient("app-1", url + "/prefix") as client:
            result = await client.post_events([r.encode() for r in ROWS], application_id="app-2")
    assert result.outcome == OK and result.config_etag == "e1"
    line, headers, body = seen[0]
    assert line == "POST /prefix/v1/events/batch HTTP/1.1"
    assert headers["x-moesif-application-id"] == "app-2" and headers["content-encoding"] == "gzip"
    assert headers["user-agent"].startswith("moesifasgi-python/") and headers["host"] == url.split("//")[1]
    assert [e["transaction_id"] for e in json.loads(gzip.decompress(body))] == ["a", "b"]


async def test_a_kept_alive_connection_is_reused_and_one_the_server_closed_is_replaced() -> None:
    connections = 0

    async def handler(reader, writer):
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        if connections == 1:  # keep the first one open for a second post
            await read_request(reader)
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()  # then close it while the client holds it idle

    server, url = await serve(handler)
    async with server:
        async with MoesifClient("app", url) as client:
            results = [await client.post_events(ROWS) for _ in range(3)]
            await asyncio.sleep(0.05)
            results.append(await client.post_events(ROWS))
    assert [r.outcome for r in results] == [OK] * 4
    assert connections == 3  # posts 1-2 on one connection; 3 and 4 each on a new one after a close


async def test_chunked_answers_and_retry_after_are_read() -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
                     b"5\r\nslow \r\n5\r\ndown!\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 400 Bad\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad request")
        await writer.drain()
        writer.close()

    server, url = await serve(handler)
    async with server:
        async with MoesifClient("app", url) as client:
            throttled = await client.post_events(ROWS)
            refused = await client.post_events(ROWS)
    assert throttled.outcome == RETRY and throttled.retry_after == 7.0 and throttled.error == "HTTP 429: slow down!"
    assert refused.outcome == REJECT and refused.error == "HTTP 400: bad request"


async def test_a_server_that_never_answers_is_a_read_timeout_and_a_retry() -> None:
    async def handler(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    server, url = await serve(handler)
    async with server:
        async with MoesifClient("app", url, timeout=httpx.Timeout(1.0, read=0.2)) as client:
            result = await client.post_events(ROWS)
    assert result.outcome == RETRY and result.error is not None and result.error.startswith("ReadTimeout")


async def test_an_answer_cut_short_is_a_failed_post() -> None:
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    server, url = await serve(handler)
    async with server:
        poster = Http11Poster(url, {}, httpx.Timeout(2.0))
        with pytest.raises(PostFailed):
            await poster.post("/v1/events/batch", b"[]", {})
        await poster.aclose()


def test_a_proxy_in_the_environment_or_the_setting_keeps_the_posts_on_httpx(monkeypatch) -> None:
    assert MoesifClient("app", "https://api.moesif.net")._poster is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert MoesifClient("app", "https://api.moesif.net")._poster is None
    monkeypatch.setenv("NO_PROXY", "api.moesif.net")
    assert MoesifClient("app", "https://api.moesif.net")._poster is not None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("MOESIF_HTTP_CLIENT", "httpx")
    assert MoesifClient("app", "https://api.moesif.net")._poster is None
    transport = httpx.MockTransport(lambda request: httpx.Response(201))
    monkeypatch.delenv("MOESIF_HTTP_CLIENT")
    assert MoesifClient("app", "https://api.moesif.net", transport=transport)._poster is None


async def test_tls_uses_the_default_verified_context_and_fails_closed_on_a_plain_server() -> None:
    async def handler(reader, writer):  # not TLS: the handshake cannot succeed
        await reader.read(100)
        writer.close()

    server, url = await serve(handler)
    async with server:
        async with MoesifClient("app", url.replace("http://", "https://"), timeout=2.0) as client:
            assert client._poster is not None
            assert client._poster._ssl_context().verify_mode.name == "CERT_REQUIRED"
            result = await client.post_events(ROWS)
    assert result.outcome == RETRY and result.error is not None and "ConnectError" in result.error


@pytest.fixture
def self_signed(tmp_path):
    """A certificate for 127.0.0.1 made with the openssl command (skipped without it)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                           "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                           "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate: {made.stderr[-200:]!r}")
    return str(key), str(cert)


async def test_a_post_over_tls_verifies_the_server_and_arrives(self_signed, monkeypatch) -> None:
    import ssl

    key, cert = self_signed
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    bodies: List[bytes] = []

    async def handler(reader, writer):
        try:
            _, _, body = await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()  # the client refused our certificate
            return
        bodies.append(body)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_tls)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        async with MoesifClient("app", url, timeout=5.0) as client:  # not trusted: refused
            untrusted = await client.post_events(ROWS)
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # trusted as httpx would trust it
        async with MoesifClient("app", url, timeout=5.0) as client:
            assert client._poster is not None
            trusted = await client.post_events(ROWS)
    assert untrusted.outcome == RETRY and "ConnectError" in (untrusted.error or "")
    assert trusted.outcome == OK and len(bodies) == 1
    assert [e["transaction_id"] for e in json.loads(gzip.decompress(bodies[0]))] == ["a", "b"]


async def _answer_with(head_and_body: bytes):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(head_and_body)
        await writer.drain()
        writer.close()

    return await serve(handler)


async def test_an_answer_too_large_to_be_moesifs_is_not_read_into_memory() -> None:
    # A misbehaving proxy announcing gigabytes: the post fails (and is retried
    # later) rather than the flusher allocating what the header claims.
    server, url = await _answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\n\r\n{}")
    async with server:
        poster = Http11Poster(url, {}, httpx.Timeout(10.0))
        with pytest.raises(PostFailed, match="5000000000 bytes"):
            await poster.post("/v1/events/batch", b"[]", {})
        await poster.aclose()


async def test_a_gzipped_answer_is_inflated_only_as_far_as_the_kept_error_text() -> None:
    bomb = gzip.compress(b"x" * (64 * 1024 * 1024))  # 64 MB from about 64 KB
    server, url = await _answer_with(b"HTTP/1.1 400 Bad Request\r\nContent-Encoding: gzip\r\nContent-Length: "
                                     + str(len(bomb)).encode() + b"\r\n\r\n" + bomb)
    async with server:
        poster = Http11Poster(url, {}, httpx.Timeout(10.0))
        tracemalloc.start()
        try:
            response = await poster.post("/v1/events/batch", b"[]", {})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        await poster.aclose()
    assert response.status_code == 400 and response.content == b"x" * (64 * 1024)
    assert peak < 8 * 1024 * 1024  # not the 64 MB the answer inflates to


def test_a_header_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        Http11Poster("http://127.0.0.1:9", {"X-Moesif-Application-Id": "app\r\nX-Evil: 1"}, httpx.Timeout(1.0))
