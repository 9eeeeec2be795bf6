"""The middleware at the ASGI level: pass-through scopes, streaming, and the raw bytes."""
from __future__ import annotations

import asyncio
import contextlib

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from moesifasgi import MoesifMiddleware
from moesifasgi.middleware import MoesifMiddleware as Direct

from .asgi_harness import Recorder, body_receiver, http_scope
from .conftest import read_events


def settings(queue_path, **extra):
    return {"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, **extra}


async def test_streamed_chunks_reach_the_client_before_the_app_sends_the_next(queue_path):
    recorder = Recorder()
    release = [asyncio.Event() for _ in range(3)]

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True})
            # The app only goes on once the test saw the chunk: if the middleware
            # held chunks back, this would never be released.
            await release[i].wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    middleware = Direct(app, settings(queue_path))
    task = asyncio.create_task(middleware(http_scope("/events"), body_receiver(), recorder))
    for i in range(3):
        await recorder.wait_for(2 + i)
        assert recorder.messages[-1]["body"] == b"data: %d\n\n" % i
        release[i].set()
    await asyncio.wait_for(task, 2)
    assert [m.get("body") for m in recorder.messages[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    [event] = read_events(queue_path)
    assert event["response"]["headers"]["content-type"] == "text/event-stream"


async def test_messages_pass_through_unchanged_but_for_the_transaction_header(queue_path):
    recorder = Recorder()
    sent = [
        {"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1"), (b"x-a", b"2")], "trailers": False},
        {"type": "http.response.body", "body": b'{"x":1}', "more_body": False},
    ]

    async def app(scope, receive, send):
        for message in sent:
            await send(dict(message))

    await Direct(app, settings(queue_path))(http_scope(), body_receiver(), recorder)
    start, body = recorder.messages
    assert start["status"] == 201 and start["trailers"] is False
    assert start["headers"][:2] == [(b"x-a", b"1"), (b"x-a", b"2")]
    assert start["headers"][2][0] == b"x-moesif-transaction-id"
    assert body == sent[1]
    [event] = read_events(queue_path)
    assert event["response"]["headers"]["x-a"] == "1, 2"  # repeated headers joined


async def test_invalid_utf8_in_headers_is_recorded_without_breaking_the_call(queue_path):
    recorder = Recorder()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-out", b"\xff\xfe")]})
        await send({"type": "http.response.body", "body": b"\xc3\x28"})

    scope = http_scope(headers=[(b"host", b"h"), (b"x-odd", b"caf\xe9 \xff")])
    await Direct(app, settings(queue_path))(scope, body_receiver(), recorder)
    assert recorder.messages[0]["status"] == 200
    [event] = read_events(queue_path)
    assert event["request"]["headers"]["x-odd"] == "caf\xe9 \xff"
    assert event["response"]["headers"]["x-out"] == "\xff\xfe"


async def test_the_middleware_never_reads_more_of_a_request_of_unknown_length_than_the_app(queue_path):
    reads = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    async def app(scope, receive, send):
        await receive()  # the app reads one chunk only
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    await Direct(app, settings(queue_path))(http_scope(method="POST"), receive, Recorder())
    assert len(reads) == 1


async def test_strict_durability_commits_before_the_last_chunk_is_sent(queue_path):
    import sqlite3

    committed_when_sent = []

    async def send(message):
        if message["type"] == "http.response.body" and not message.get("more_body"):
            conn = sqlite3.connect(queue_path)
            committed_when_sent.append(conn.execute("SELECT COALESCE(SUM(event_count), 0) FROM events").fetchone()[0])
            conn.close()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    middleware = Direct(app, settings(queue_path, DURABILITY="strict"))
    for _ in range(3):
        await middleware(http_scope(), body_receiver(), send)
    assert committed_when_sent == [1, 2, 3]


def test_lifespan_and_websocket_scopes_pass_through(queue_path):
    events = []

    async def homepage(request):
        return JSONResponse({"hello": "world"})

    async def ws(websocket):
        await websocket.accept()
        await websocket.send_text("hi " + await websocket.receive_text())
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/", homepage), WebSocketRoute("/ws", ws)], lifespan=lifespan)
    app.add_middleware(MoesifMiddleware, settings=settings(queue_path))
    with TestClient(app) as client:
        assert client.get("/").json() == {"hello": "world"}
        with client.websocket_connect("/ws") as socket:
            socket.send_text("there")
            assert socket.receive_text() == "hi there"
    assert events == ["startup", "shutdown"]
    # Only the HTTP call is an event; it was committed at lifespan shutdown.
    assert [e["request"]["uri"] for e in read_events(queue_path)] == ["http://testserver/"]


def test_a_plain_starlette_streaming_response_arrives_unchanged(queue_path):
    async def numbers(request):
        async def gen():
            for i in range(100):
                yield f"line {i}\n"

        return StreamingResponse(gen(), media_type="text/plain")

    app = Starlette(routes=[Route("/n", numbers)])
    app.add_middleware(MoesifMiddleware, settings=settings(queue_path))
    with TestClient(app) as client:
        body = client.get("/n").text
    assert body == "".join(f"line {i}\n" for i in range(100))
    [event] = read_events(queue_path)
    import base64

    assert base64.b64decode(event["response"]["body"]).decode() == body
