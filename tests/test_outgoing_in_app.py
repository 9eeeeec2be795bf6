"""Outgoing capture inside an ASGI app: handlers (sync and async) and background tasks."""
from __future__ import annotations

import httpx
import requests
from fastapi import BackgroundTasks, FastAPI
from fastapi.testclient import TestClient

from moesifasgi import MoesifMiddleware, outgoing
from moesifasgi.settings import parse_settings

from .conftest import read_events
from .outgoing_support import refused_url, target  # noqa: F401  (fixtures)


def make_app(queue_path: str, target_url: str) -> FastAPI:
    app = FastAPI()

    @app.get("/sync")
    def sync_handler():
        return {"upstream": requests.get(target_url + "/json?via=sync").status_code}

    @app.get("/async")
    async def async_handler():
        async with httpx.AsyncClient() as client:
            response = await client.get(target_url + "/json?via=async")
        return {"upstream": response.status_code}

    @app.get("/background")
    def background(tasks: BackgroundTasks):
        tasks.add_task(lambda: httpx.get(target_url + "/json?via=background"))
        return {"queued": True}

    @app.get("/failing")
    def failing():
        try:
            requests.get(refused_url())
        except requests.ConnectionError as exc:
            return {"error": type(exc).__name__}

    settings = {"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, "CAPTURE_OUTGOING_REQUESTS": True}
    app.add_middleware(MoesifMiddleware, settings=settings)
    outgoing.install(parse_settings(settings))  # what the middleware does with CAPTURE_OUTGOING_REQUESTS
    return app


def test_calls_from_handlers_and_background_tasks_share_the_queue_with_incoming_events(target, queue_path):
    try:
        with TestClient(make_app(queue_path, target.url)) as client:
            assert client.get("/sync").json() == {"upstream": 200}
            assert client.get("/async").json() == {"upstream": 200}
            assert client.get("/background").json() == {"queued": True}
            assert client.get("/failing").json() == {"error": "ConnectionError"}
        events = read_events(queue_path)
    finally:
        outgoing.uninstall()
    incoming = sorted(e["request"]["uri"] for e in events if e["direction"] == "Incoming")
    out = sorted(e["request"]["uri"] for e in events if e["direction"] == "Outgoing" and e["response"]["status"])
    assert incoming == ["http://testserver/async", "http://testserver/background",
                        "http://testserver/failing", "http://testserver/sync"]
    # The TestClient's own calls go through httpx too, but never leave the process.
    assert out == [target.url + "/json?via=async", target.url + "/json?via=background", target.url + "/json?via=sync"]
    assert [e["response"]["status"] for e in events if e["direction"] == "Outgoing"].count(0) == 1
