"""MASK_EVENT_MODEL runs before anything touches the disk, and a broken mask records only a minimal event."""
from __future__ import annotations

import asyncio
import glob
import logging

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.testclient import TestClient

from moesifasgi import MoesifMiddleware

from .conftest import read_counter, read_events, read_problems

SECRET = "hunter2-very-secret-value"


def make_app(queue_path: str, mask) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    async def login(request: Request):
        payload = await request.json()
        return {"user": payload["user"], "password": payload["password"], "token": SECRET}

    app.add_middleware(
        MoesifMiddleware, settings={"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, "MASK_EVENT_MODEL": mask}
    )
    return app


def all_queue_bytes(queue_path: str) -> bytes:
    data = b""
    for name in glob.glob(queue_path + "*"):
        with open(name, "rb") as f:
            data += f.read()
    return data


def test_a_masked_secret_never_reaches_the_queue_files(queue_path):
    def mask(event):
        event.request.body["password"] = None
        event.response.body["password"] = None
        event.response.body["token"] = "***"
        return event

    client = TestClient(make_app(queue_path, mask))
    response = client.post("/login", json={"user": "ann", "password": SECRET})
    assert response.json()["token"] == SECRET  # the client still gets the real response

    [event] = read_events(queue_path)
    assert event["request"]["body"] == {"user": "ann", "password": None}
    assert event["response"]["body"] == {"user": "ann", "password": None, "token": "***"}
    # Not in the database, nor its WAL, nor the shared-memory file.
    assert SECRET.encode() not in all_queue_bytes(queue_path)


def test_an_async_mask_works_and_keeps_the_transaction_id(queue_path):
    async def mask(event):
        event.response.body = None
        return event

    client = TestClient(make_app(queue_path, mask))
    response = client.post("/login", json={"user": "ann", "password": SECRET})
    [event] = read_events(queue_path)
    assert "body" not in event["response"]
    assert event["transaction_id"] == response.headers["x-moesif-transaction-id"]


def test_a_mask_that_raises_records_a_minimal_event_without_the_secret_and_counts_it(queue_path, caplog):
    def mask(event):
        raise KeyError("no such field")

    client = TestClient(make_app(queue_path, mask))
    with caplog.at_level(logging.WARNING, logger="moesifasgi"):
        ids = []
        for _ in range(3):
            response = client.post(f"/login?token={SECRET}", json={"user": "ann", "password": SECRET},
                                   headers={"authorization": "Bearer " + SECRET})
            assert response.status_code == 200
            ids.append(response.headers["x-moesif-transaction-id"])
    events = read_events(queue_path)
    assert [e["transaction_id"] for e in events] == ids
    for event in events:
        assert event["request"] == {"time": event["request"]["time"], "uri": "http://testserver/login",
                                    "verb": "POST", "headers": {}}
        assert event["response"] == {"time": event["response"]["time"], "status": 200, "headers": {}}
        assert "metadata" not in event
    assert read_problems(queue_path) == {"mask-failed": 3}
    assert read_counter(queue_path, "dropped") == 0
    assert SECRET.encode() not in all_queue_bytes(queue_path)
    reports = [r for r in caplog.records if "MASK_EVENT_MODEL" in r.getMessage()]
    assert len(reports) == 1  # logged once, not once per request


def test_a_mask_that_returns_none_or_something_else_records_a_minimal_event(queue_path):
    results = iter([None, {"not": "an event"}])
    client = TestClient(make_app(queue_path, lambda event: next(results)))
    client.post("/login", json={"user": "ann", "password": SECRET})
    client.post("/login", json={"user": "ann", "password": SECRET})
    assert [e["request"]["headers"] for e in read_events(queue_path)] == [{}, {}]
    assert read_problems(queue_path) == {"mask-failed": 2}
    assert SECRET.encode() not in all_queue_bytes(queue_path)


def test_a_mask_that_hangs_past_callback_timeout_records_a_minimal_event(queue_path):
    async def mask(event):
        await asyncio.sleep(30)
        return event

    app = FastAPI()

    @app.get("/hello")
    def hello():
        return {"password": SECRET}

    app.add_middleware(MoesifMiddleware, settings={
        "APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, "MASK_EVENT_MODEL": mask, "CALLBACK_TIMEOUT": 0.2})
    with TestClient(app) as client:
        assert client.get("/hello").json() == {"password": SECRET}
    [event] = read_events(queue_path)
    assert "body" not in event["response"] and event["response"]["status"] == 200
    assert read_problems(queue_path) == {"mask-failed": 1}
    assert SECRET.encode() not in all_queue_bytes(queue_path)


def _readme_mask():
    """The README's hand-written MASK_EVENT_MODEL example, run from the README itself."""
    import pathlib

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    (source,) = [block.split("```", 1)[0] for block in readme.split("```python\n")[1:] if "def mask_event(" in block]
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    return namespace["mask_event"]


readme_mask = _readme_mask()


def test_the_readme_mask_example_works_on_every_body_form(queue_path):
    app = FastAPI()

    @app.get("/no-content", status_code=204)
    def no_content():
        # Not `return None`: FastAPI before 0.79 sends that as a "null" body with the 204.
        return Response(status_code=204)

    @app.get("/redirect")
    def redirect():
        return RedirectResponse("/elsewhere")

    @app.get("/list")
    def a_list():
        return ["password", "x"]

    @app.get("/dict")
    def a_dict():
        return {"password": SECRET}

    @app.get("/text")
    def text():
        return PlainTextResponse("password")

    app.add_middleware(MoesifMiddleware, settings={
        "APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, "MASK_EVENT_MODEL": readme_mask})
    client = TestClient(app)
    for path in ("/no-content", "/redirect", "/list", "/dict", "/text"):
        client.get(path, follow_redirects=False)
    events = read_events(queue_path)
    assert [e["response"]["status"] for e in events] == [204, 307, 200, 200, 200]
    assert all(e["response"]["headers"] for e in events)  # masked, not minimal
    assert events[2]["response"]["body"] == ["password", "x"]
    assert events[3]["response"]["body"] == {"password": "***"}
    assert read_problems(queue_path) == {}


def test_the_readme_mask_example_works_with_log_body_off(queue_path):
    app = FastAPI()

    @app.get("/dict")
    def a_dict():
        return {"password": SECRET}

    app.add_middleware(MoesifMiddleware, settings={
        "APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, "MASK_EVENT_MODEL": readme_mask, "LOG_BODY": False})
    TestClient(app).get("/dict")
    [event] = read_events(queue_path)
    assert event["response"]["headers"] and "body" not in event["response"]
    assert read_problems(queue_path) == {}
