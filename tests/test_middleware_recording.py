"""Every answered call becomes one event: bodies the app never read, callbacks that
read bodies, cancelled apps, background tasks, and values that are not JSON."""
from __future__ import annotations

import asyncio
import base64
import json
import math
import sqlite3

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response

from moesifasgi.middleware import MoesifMiddleware
from moesifasgi.storage import queue_store

from .asgi_harness import Recorder, http_scope
from .conftest import read_counter, read_events, read_problems


def settings(queue_path: str, **extra):
    return {"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, **extra}


def fastapi_app(queue_path: str, **extra) -> FastAPI:
    app = FastAPI()

    @app.post("/ignores-body")
    def ignores_body():
        return {"ok": True}

    @app.post("/echo")
    async def echo(request: Request):
        return JSONResponse(await request.json())

    @app.post("/form")
    async def form(request: Request):
        return {"fields": len(await request.form())}

    app.add_middleware(MoesifMiddleware, settings=settings(queue_path, **extra))
    return app


# -- request bodies the app does not read -------------------------------------------

def test_a_body_the_app_never_reads_is_recorded_for_a_404_and_a_route_that_ignores_it(queue_path):
    client = TestClient(fastapi_app(queue_path))
    assert client.post("/nowhere", json={"a": 1}).status_code == 404
    assert client.post("/ignores-body", json={"b": 2}).json() == {"ok": True}
    assert [e["request"].get("body") for e in read_events(queue_path)] == [{"a": 1}, {"b": 2}]


def test_a_body_read_ahead_reaches_the_app_unchanged(queue_path):
    client = TestClient(fastapi_app(queue_path))
    payload = {"text": "é" * 1000, "n": list(range(100))}
    assert client.post("/echo", json=payload).json() == payload
    [event] = read_events(queue_path)
    assert event["request"]["body"] == payload


async def test_the_read_ahead_replays_every_message_then_reads_on(queue_path):
    messages = [
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"1}", "more_body": False},
        {"type": "http.disconnect"},
    ]
    upstream = list(messages)
    seen = []

    async def receive():
        return upstream.pop(0)

    async def app(scope, receive, send):
        for _ in range(3):
            seen.append(await receive())
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = http_scope("/x", method="POST", headers=[(b"host", b"h"), (b"content-length", b"7"),
                                                      (b"content-type", b"application/json")])
    await MoesifMiddleware(app, settings(queue_path))(scope, receive, Recorder())
    assert seen == messages
    [event] = read_events(queue_path)
    assert event["request"]["body"] == {"a": 1}


async def test_a_body_over_the_cap_or_of_unknown_length_is_not_read_ahead(queue_path):
    reads = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 10, "more_body": True}

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = MoesifMiddleware(app, settings(queue_path, MAX_BODY_BYTES=100))
    for headers in ([(b"content-length", b"101")], [(b"transfer-encoding", b"chunked")],
                    [(b"content-length", b"50"), (b"content-type", b"multipart/form-data; boundary=x")]):
        await middleware(http_scope("/", method="POST", headers=[(b"host", b"h"), *headers]), receive, Recorder())
    assert reads == []
    assert len(read_events(queue_path)) == 3


# -- what callbacks read ------------------------------------------------------------

def test_callbacks_can_always_await_the_request_body_json_and_form(queue_path):
    seen = []

    async def metadata(request, response):
        body = await request.body()
        try:
            parsed = await request.json()
        except ValueError as exc:
            parsed = type(exc).__name__
        form = await request.form()
        seen.append((body, parsed, dict(form)))
        return {"len": len(body)}

    app = fastapi_app(queue_path, GET_METADATA=metadata, MAX_BODY_BYTES=1000)
    client = TestClient(app)
    # Bytes, not json=: clients differ in the JSON text they write (httpx < 0.28 and requests add spaces).
    as_json = {"content-type": "application/json"}
    client.post("/nowhere", content=b'{"a":1}', headers=as_json)              # not read by the app
    client.post("/echo", content=b'{"b":2}', headers=as_json)                 # read by the app
    client.post("/ignores-body", content=b"x" * 5000)                        # over the cap
    client.post("/form", files={"f": ("name.txt", b"data")}, data={"k": "v"})  # multipart, read
    client.get("/nowhere")                                                   # no body
    client.post("/ignores-body", files={"f": ("name.txt", b"data")})         # multipart, not read
    assert seen[0] == (b'{"a":1}', {"a": 1}, {})
    assert seen[1] == (b'{"b":2}', {"b": 2}, {})
    assert seen[2] == (b"", "JSONDecodeError", {})
    assert seen[3][0] == b"" and seen[3][2] == {"k": "v", "f": "name.txt"}
    assert seen[4] == (b"", "JSONDecodeError", {})
    assert seen[5] == (b"", "JSONDecodeError", {})
    assert len(read_events(queue_path)) == 6
    assert read_problems(queue_path) == {}


def test_a_callback_whose_json_raises_still_records_the_event(queue_path):
    async def identify_user(request, response):
        return (await request.json())["user"]

    client = TestClient(fastapi_app(queue_path, IDENTIFY_USER=identify_user, MAX_BODY_BYTES=10))
    client.post("/ignores-body", json={"user": "a-long-user-name"})
    [event] = read_events(queue_path)
    assert "user_id" not in event
    assert read_problems(queue_path) == {"callback-raised:IDENTIFY_USER": 1}


# -- the app's own work is never held back ------------------------------------------

def test_a_callback_never_delays_the_apps_background_task(queue_path):
    # The callback can only finish once the background task has run: if recording
    # held the background task back, the callback would run out of time instead.
    background_ran = asyncio.Event()

    async def identify_user(request, response):
        await background_ran.wait()
        return "ann"

    async def background():
        background_ran.set()

    app = FastAPI()

    @app.get("/bg")
    def bg():
        return JSONResponse({"ok": True}, background=BackgroundTask(background))

    app.add_middleware(MoesifMiddleware, settings=settings(queue_path, IDENTIFY_USER=identify_user,
                                                           CALLBACK_TIMEOUT=30))
    assert TestClient(app).get("/bg").json() == {"ok": True}
    [event] = read_events(queue_path)
    assert event["user_id"] == "ann"
    assert read_problems(queue_path) == {}


async def test_the_last_chunk_is_sent_before_callbacks_run(queue_path):
    order = []

    async def identify_user(request, response):
        order.append("callback")
        return "ann"

    async def send(message):
        if message["type"] == "http.response.body":
            order.append("last chunk")

    async def app(scope, receive, send_):
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": b"ok"})
        order.append("app done")

    await MoesifMiddleware(app, settings(queue_path, IDENTIFY_USER=identify_user))(
        http_scope(), _no_body, send)
    assert order == ["last chunk", "app done", "callback"]


async def _no_body():
    return {"type": "http.request", "body": b"", "more_body": False}


# -- cancellation ---------------------------------------------------------------------

async def test_a_cancelled_app_is_recorded_with_what_was_sent_and_the_cancellation_goes_on(queue_path):
    recorder = Recorder()
    forever = asyncio.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"chunk%d" % i, "more_body": True})
        await forever.wait()

    task = asyncio.create_task(MoesifMiddleware(app, settings(queue_path))(http_scope("/slow"), _no_body, recorder))
    await recorder.wait_for(4)
    task.cancel()
    try:
        await task
        raise AssertionError("the cancellation was swallowed")
    except asyncio.CancelledError:
        pass
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 200
    assert base64.b64decode(event["response"]["body"]) == b"chunk0chunk1chunk2"


async def test_a_call_cancelled_with_async_callbacks_is_recorded_by_a_task_that_shutdown_waits_for(queue_path):
    from moesifasgi.sync_bridge import wait_background

    async def identify_user(request, response):
        await asyncio.sleep(0.05)
        return "ann"

    async def app(scope, receive, send):
        await asyncio.Event().wait()

    task = asyncio.create_task(MoesifMiddleware(app, settings(queue_path, IDENTIFY_USER=identify_user))(
        http_scope("/never"), _no_body, Recorder()))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await wait_background(10)
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 500 and event["user_id"] == "ann"


# -- values that are not JSON ---------------------------------------------------------

def test_json_nested_thousands_deep_is_recorded_as_base64_of_its_bytes(queue_path):
    # 3000, not 1000: from Python 3.12 the standard library encodes 1000 levels
    # (orjson refuses past 1024), so the body would be recorded as JSON there.
    deep = b"[" * 3000 + b"]" * 3000
    client = TestClient(fastapi_app(queue_path))
    client.post("/ignores-body", content=deep, headers={"content-type": "application/json"})
    [event] = read_events(queue_path)
    assert event["request"]["transfer_encoding"] == "base64"
    assert base64.b64decode(event["request"]["body"]) == deep
    assert read_counter(queue_path, "dropped") == 0


def test_metadata_that_contains_itself_or_nan_is_stored_as_marked_valid_json(queue_path):
    looped = {"a": 1}
    looped["self"] = looped
    # 20000 deep: Python 3.12+ encodes 5000 levels, which would then be valid JSON.
    values = iter([looped, {"nan": math.nan, "big": 2 ** 70}, _deep(20000)])

    client = TestClient(fastapi_app(queue_path, GET_METADATA=lambda request, response: next(values)))
    for _ in range(3):
        client.post("/ignores-body")
    events = read_events(queue_path)  # json.loads: every stored event is valid JSON
    assert len(events) == 3
    for event in events:
        assert event["metadata"]["_moesifasgi"].startswith("moesifasgi: not valid JSON")
    assert "'a': 1" in events[0]["metadata"]["text"]
    assert read_problems(queue_path) == {"metadata-not-json": 3}
    assert read_counter(queue_path, "dropped") == 0


def _deep(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_stored_events_are_strict_json(queue_path):
    # NaN is not JSON: Python's parser accepts it unless told otherwise.
    client = TestClient(fastapi_app(queue_path, GET_METADATA=lambda request, response: {"x": math.inf, "big": 2 ** 70}))
    client.post("/ignores-body")
    assert len(read_events(queue_path)) == 1  # committed
    [body] = [e.body for e in queue_store.stored_events(sqlite3.connect(queue_path))]

    def refuse(name):
        raise ValueError(name)

    json.loads(body, parse_constant=refuse)


# -- our own bugs ---------------------------------------------------------------------

def test_our_own_error_while_recording_never_reaches_the_app_and_is_counted_by_reason(queue_path, monkeypatch, caplog):
    from moesifasgi import middleware as middleware_module

    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(middleware_module, "build_event", broken)
    for durability in ("batched", "strict"):
        client = TestClient(fastapi_app(queue_path, DURABILITY=durability))
        assert client.post("/echo", json={"a": 1}).json() == {"a": 1}
    assert read_events(queue_path) == []
    assert read_counter(queue_path, "dropped") == 2
    assert read_problems(queue_path) == {"drop:internal": 2}
    assert caplog.text.count("unexpected error while recording") == 1


async def test_a_receive_that_fails_during_the_read_ahead_fails_for_the_app_where_it_would_have(queue_path):
    calls = []

    async def receive():
        calls.append(1)
        if len(calls) == 1:
            return {"type": "http.request", "body": b'{"a":', "more_body": True}
        raise OSError("connection reset")

    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())
        try:
            await receive()
        except OSError as exc:
            seen.append(str(exc))
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = http_scope("/x", method="POST", headers=[(b"host", b"h"), (b"content-length", b"7")])
    await MoesifMiddleware(app, settings(queue_path))(scope, receive, Recorder())
    assert seen == [{"type": "http.request", "body": b'{"a":', "more_body": True}, "connection reset"]
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 400


async def test_a_call_cancelled_while_its_callbacks_run_after_the_response_is_still_recorded_once(queue_path):
    from moesifasgi.sync_bridge import wait_background

    started = asyncio.Event()

    async def identify_user(request, response):
        started.set()
        await asyncio.sleep(0.2)
        return "ann"

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = MoesifMiddleware(app, settings(queue_path, IDENTIFY_USER=identify_user))
    task = asyncio.create_task(middleware(http_scope("/done"), _no_body, Recorder()))
    await started.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await wait_background(10)
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 200 and event["user_id"] == "ann"


def test_identify_user_reads_what_the_app_put_on_request_state_and_anonymous_calls_are_recorded(queue_path):
    class User:
        id = "u-42"

    app = FastAPI()

    @app.get("/me")
    def me(request: Request, anonymous: bool = False):
        if not anonymous:
            request.state.user = User()
        return {"ok": True}

    def identify_user(request, response):
        return request.state.user.id  # the README-style callback: raises for anonymous calls

    app.add_middleware(MoesifMiddleware, settings=settings(queue_path, IDENTIFY_USER=identify_user))
    client = TestClient(app)
    client.get("/me")
    client.get("/me?anonymous=true")
    events = read_events(queue_path)
    assert [e.get("user_id") for e in events] == ["u-42", None]
    assert read_problems(queue_path) == {"callback-raised:IDENTIFY_USER": 1}


def test_the_original_readmes_mask_example_no_longer_loses_a_204_or_a_list_body(queue_path):
    def original_mask(eventmodel):
        # Moesif's own README example for 1.1.8: raises on None and list bodies.
        if 'password' in eventmodel.response.body:
            eventmodel.response.body['password'] = None
        return eventmodel

    app = FastAPI()

    @app.get("/no-content", status_code=204)
    def no_content():
        # Not `return None`: FastAPI before 0.79 sends that as a "null" body with the 204.
        return Response(status_code=204)

    @app.get("/list")
    def a_list():
        return ["password"]

    @app.get("/dict")
    def a_dict():
        return {"password": "secret"}

    app.add_middleware(MoesifMiddleware, settings=settings(queue_path, MASK_EVENT_MODEL=original_mask))
    client = TestClient(app)
    for path in ("/no-content", "/list", "/dict"):
        client.get(path)
    events = read_events(queue_path)
    assert [e["response"]["status"] for e in events] == [204, 200, 200]
    assert events[0]["request"]["headers"] == {} and events[1]["request"]["headers"] == {}  # minimal
    assert events[2]["response"]["body"] == {"password": None}  # masked as written
    assert read_problems(queue_path) == {"mask-failed": 2}
    assert read_counter(queue_path, "dropped") == 0


async def test_a_body_read_ahead_in_one_message_is_replayed_once_then_the_server_is_read(queue_path):
    upstream = [{"type": "http.request", "body": b'{"a":1}', "more_body": False}, {"type": "http.disconnect"}]
    expected = list(upstream)
    seen = []

    async def receive():
        return upstream.pop(0)

    async def app(scope, receive, send):
        seen.append(await receive())
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = http_scope("/x", method="POST", headers=[(b"host", b"h"), (b"content-length", b"7"),
                                                      (b"content-type", b"application/json")])
    await MoesifMiddleware(app, settings(queue_path))(scope, receive, Recorder())
    assert seen == expected
    [event] = read_events(queue_path)
    assert event["request"]["body"] == {"a": 1}


async def test_a_receive_that_fails_at_once_during_the_read_ahead_fails_for_the_app_at_its_first_read(queue_path):
    async def receive():
        raise OSError("connection reset")

    seen = []

    async def app(scope, receive, send):
        try:
            await receive()
        except OSError as exc:
            seen.append(str(exc))
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = http_scope("/x", method="POST", headers=[(b"host", b"h"), (b"content-length", b"7")])
    await MoesifMiddleware(app, settings(queue_path))(scope, receive, Recorder())
    assert seen == ["connection reset"]
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 400
