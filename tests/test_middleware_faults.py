"""Bad input and broken parts never break the host app."""
from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from moesifasgi import MoesifMiddleware

from .conftest import read_counter, read_events, read_problems


def make_app(queue_path: str, **settings) -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    def ok():
        return {"ok": True}

    @app.post("/upload")
    async def upload(request: Request):
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"received": size}

    app.add_middleware(MoesifMiddleware, settings={"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, **settings})
    return app


@pytest.mark.parametrize("settings", [{}, {"APPLICATION_ID": ""}, {"APPLICATION_ID": "   "}, {"APPLICATION_ID": None}])
def test_only_a_missing_application_id_stops_the_app(settings):
    with pytest.raises(ValueError, match="moesifasgi: APPLICATION_ID is required"):
        MoesifMiddleware(FastAPI(), settings=settings)


@pytest.mark.parametrize(
    "settings, field, value",
    [
        ({"DURABILITY": "maybe"}, "durability", "batched"),
        ({"BATCH_SIZE": 0}, "batch_size", 100),
        ({"BATCH_SIZE": "many"}, "batch_size", 100),
        ({"EVENT_BATCH_TIMEOUT": -1}, "event_batch_timeout", 1.0),
        ({"EVENT_BATCH_TIMEOUT": "1"}, "event_batch_timeout", 1.0),
        ({"FLUSHER": "thread"}, "flusher", "helper"),
        ({"MAX_BODY_BYTES": -5}, "max_body_bytes", 256 * 1024),
        ({"CALLBACK_TIMEOUT": 0}, "callback_timeout", 2.0),
        ({"SKIP": "not callable"}, "skip", None),
        ({"IDENTIFY_USER": 42}, "identify_user", None),
    ],
)
def test_a_setting_the_original_tolerated_gets_its_default_with_a_warning(settings, field, value, caplog):
    with caplog.at_level(logging.WARNING, logger="moesifasgi"):
        middleware = MoesifMiddleware(FastAPI(), settings={"APPLICATION_ID": "x", **settings})
    assert getattr(middleware.settings, field) == value
    [key] = settings
    assert [r for r in caplog.records if key in r.getMessage()]


def test_settings_of_the_original_mean_what_they_meant_there(caplog):
    with caplog.at_level(logging.WARNING, logger="moesifasgi"):
        middleware = MoesifMiddleware(FastAPI(), settings={
            "APPLICATION_ID": "x", "BATCH_SIZE": 100.0, "EVENT_QUEUE_SIZE": 0, "EVENT_WORKER_COUNT": 0,
            "SKIP": False, "EVENT_BATCH_TIMEOUT": 2})
    s = middleware.settings
    assert s.batch_size == 100 and type(s.batch_size) is int
    assert s.event_queue_size >= 2 ** 62  # 0 made the original's queue.Queue unbounded
    assert s.flush_concurrency == 4 and s.skip is None and s.event_batch_timeout == 2.0
    assert caplog.records == []  # all of these are what the original accepted silently


def test_event_queue_size_0_records_every_call_as_the_originals_unbounded_queue_did(queue_path):
    client = TestClient(make_app(queue_path, EVENT_QUEUE_SIZE=0, BATCH_SIZE=100.0))
    for _ in range(3):
        assert client.get("/ok").status_code == 200
    assert len(read_events(queue_path)) == 3
    assert read_counter(queue_path, "dropped") == 0


def test_the_middleware_is_built_the_original_ways_and_its_settings_read_like_a_dict(queue_path):
    settings = {"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, "LOG_BODY": False}
    for middleware in (MoesifMiddleware(settings=settings), MoesifMiddleware(settings),
                       MoesifMiddleware(settings, FastAPI()), MoesifMiddleware(app=FastAPI(), settings=settings)):
        assert middleware.settings["APPLICATION_ID"] == "app-id"
        assert middleware.settings.get("LOG_BODY") is False and "QUEUE_PATH" in middleware.settings
        assert middleware.settings.get("DEBUG", "unset") == "unset" and dict(middleware.settings) == settings
        assert middleware.settings.copy() == settings and len(middleware.settings) == 3
    assert MoesifMiddleware(settings, FastAPI()).app is not None
    assert MoesifMiddleware(settings=settings).update_user({"user_id": "u1"}).result(10) == 1


@pytest.mark.parametrize("settings", ["APPLICATION_ID=x", ["APPLICATION_ID"]])
def test_settings_that_are_not_a_dict_are_a_type_error(settings):
    with pytest.raises(TypeError, match="settings must be a dict"):
        MoesifMiddleware(FastAPI(), settings=settings)


@pytest.mark.parametrize("callback", ["IDENTIFY_USER", "IDENTIFY_COMPANY", "GET_METADATA", "GET_SESSION_TOKEN"])
def test_a_callback_that_raises_leaves_its_field_out_and_the_event_is_recorded(queue_path, callback, caplog):
    async def broken(request, response):
        return request.state.user.id  # an anonymous call has no user: AttributeError

    fields = {"IDENTIFY_USER": "user_id", "IDENTIFY_COMPANY": "company_id", "GET_METADATA": "metadata",
              "GET_SESSION_TOKEN": "session_token"}
    others = {name: (lambda request, response: {"k": "v"}) if name == "GET_METADATA" else
              (lambda request, response: "x") for name in fields if name != callback}
    client = TestClient(make_app(queue_path, **others, **{callback: broken}))
    with caplog.at_level(logging.WARNING, logger="moesifasgi"):
        for _ in range(5):
            response = client.get("/ok")
            assert response.status_code == 200 and response.json() == {"ok": True}
    events = read_events(queue_path)
    assert len(events) == 5
    for event in events:
        assert fields[callback] not in event
        assert all(fields[name] in event for name in others)
    assert read_counter(queue_path, "dropped") == 0
    assert read_problems(queue_path) == {f"callback-raised:{callback}": 5}
    assert len([r for r in caplog.records if callback in r.getMessage()]) == 1


def test_a_skip_that_raises_means_not_skipped(queue_path):
    client = TestClient(make_app(queue_path, SKIP=lambda request, response: 1 / 0))
    client.get("/ok")
    assert len(read_events(queue_path)) == 1
    assert read_problems(queue_path) == {"callback-raised:SKIP": 1}


def test_a_callback_that_hangs_is_cut_at_callback_timeout_and_the_event_is_recorded(queue_path):
    async def slow_user(request, response):
        await asyncio.sleep(30)

    async def company(request, response):
        return "acme"

    client = TestClient(make_app(queue_path, IDENTIFY_USER=slow_user, IDENTIFY_COMPANY=company,
                                 CALLBACK_TIMEOUT=0.3))
    started = time.monotonic()
    assert client.get("/ok").status_code == 200
    [event] = read_events(queue_path)
    assert "user_id" not in event and event["company_id"] == "acme"
    assert time.monotonic() - started < 10
    assert read_problems(queue_path) == {"callback-timeout:IDENTIFY_USER": 1}


def test_in_strict_mode_callback_timeout_bounds_how_long_the_response_is_held(queue_path):
    async def slow_user(request, response):
        await asyncio.sleep(20)

    app = make_app(queue_path, IDENTIFY_USER=slow_user, CALLBACK_TIMEOUT=0.5, DURABILITY="strict")
    client = TestClient(app)
    started = time.monotonic()
    assert client.get("/ok").status_code == 200
    held = time.monotonic() - started
    assert 0.5 <= held < 15  # the callback's 20 s never reach the client
    assert len(read_events(queue_path)) == 1


def test_a_20_mb_upload_reaches_the_app_whole_and_the_event_keeps_a_bounded_prefix(queue_path):
    client = TestClient(make_app(queue_path, MAX_BODY_BYTES=64 * 1024))
    payload = os.urandom(20 * 1024 * 1024)
    response = client.post("/upload", content=payload, headers={"content-type": "application/octet-stream"})
    assert response.json() == {"received": len(payload)}
    [event] = read_events(queue_path)
    body = event["request"]["body"]
    assert event["request"]["transfer_encoding"] == "base64"
    assert len(body) < 64 * 1024 * 4 // 3 + 1024


def test_a_multipart_upload_is_recorded_as_field_and_file_names_only(queue_path):
    client = TestClient(make_app(queue_path))
    secret_content = b"FILE-CONTENT-THAT-MUST-NOT-BE-STORED" * 100
    response = client.post(
        "/upload", data={"title": "holiday"}, files={"photo": ("beach.jpg", secret_content, "image/jpeg")}
    )
    assert response.status_code == 200
    [event] = read_events(queue_path)
    assert event["request"]["body"] == {"title": "holiday", "photo": "beach.jpg"}
    with open(queue_path, "rb") as f, open(queue_path + "-wal", "rb") as w:
        assert b"FILE-CONTENT" not in f.read() + w.read()


def test_a_non_json_body_that_claims_to_be_json_is_sent_as_base64(queue_path):
    client = TestClient(make_app(queue_path))
    client.post("/upload", content=b"{not json at all", headers={"content-type": "application/json"})
    [event] = read_events(queue_path)
    assert event["request"]["transfer_encoding"] == "base64"


def test_a_corrupt_queue_file_is_moved_aside_once_and_a_new_one_takes_the_events(tmp_path, caplog):
    path = tmp_path / "broken.sqlite"
    damaged = b"corrupt " * 1000
    path.write_bytes(damaged)
    client = TestClient(make_app(str(path)))
    with caplog.at_level(logging.WARNING, logger="moesifasgi"):
        for _ in range(20):
            assert client.get("/ok").status_code == 200
        from moesifasgi import writers

        writers.flush_all()
    errors = [r for r in caplog.records if "is corrupt" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    [moved] = tmp_path.glob("broken.sqlite.corrupt-*")
    assert moved.read_bytes() == damaged  # kept for inspection, untouched
    assert str(moved) in errors[0].getMessage()
    assert len(read_events(str(path))) == 20  # nothing lost: the fresh file took them all


def test_a_queue_file_that_cannot_be_opened_never_breaks_the_app_and_is_logged_once(tmp_path, caplog):
    path = tmp_path / "a-directory.sqlite"
    path.mkdir()  # not corrupt, just unusable: it must not be moved
    client = TestClient(make_app(str(path)))
    with caplog.at_level(logging.WARNING, logger="moesifasgi"):
        for _ in range(20):
            assert client.get("/ok").status_code == 200
        from moesifasgi import writers

        writers.flush_all()
    errors = [r for r in caplog.records if "cannot write to the queue file" in r.getMessage()]
    assert len(errors) == 1
    assert path.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_an_unwritable_queue_directory_never_breaks_the_app(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits; a path under a regular file fails for everyone.
        blocker = tmp_path / "file"
        blocker.write_text("x")
        path = str(blocker / "queue.sqlite")
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        path = str(ro / "queue.sqlite")
    client = TestClient(make_app(path))
    for _ in range(5):
        assert client.get("/ok").json() == {"ok": True}


def test_the_library_never_configures_root_logging(queue_path):
    before = list(logging.getLogger().handlers)
    client = TestClient(make_app(queue_path, DEBUG=True))
    client.get("/ok")
    assert logging.getLogger().handlers == before
