"""MASK_EVENT_MODEL runs before anything touches the disk, and a broken mask drops the event."""
from __future__ import annotations

import glob
import logging

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from moesifasgi import MoesifMiddleware

from .conftest import read_counter, read_events

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


def test_a_mask_that_raises_drops_the_event_and_counts_it_and_the_app_is_unaffected(queue_path, caplog):
    def mask(event):
        raise KeyError("no such field")

    client = TestClient(make_app(queue_path, mask))
    with caplog.at_level(logging.WARNING, logger="moesifasgi"):
        for _ in range(3):
            assert client.post("/login", json={"user": "ann", "password": SECRET}).status_code == 200
    assert read_events(queue_path) == []
    assert read_counter(queue_path, "dropped") == 3
    assert SECRET.encode() not in all_queue_bytes(queue_path)
    reports = [r for r in caplog.records if "MASK_EVENT_MODEL" in r.getMessage()]
    assert len(reports) == 1  # logged once, not once per request


def test_a_mask_that_returns_none_or_something_else_drops_the_event(queue_path):
    results = iter([None, {"not": "an event"}])
    client = TestClient(make_app(queue_path, lambda event: next(results)))
    client.post("/login", json={"user": "ann", "password": SECRET})
    client.post("/login", json={"user": "ann", "password": SECRET})
    assert read_events(queue_path) == []
    assert read_counter(queue_path, "dropped") == 2
    assert SECRET.encode() not in all_queue_bytes(queue_path)
