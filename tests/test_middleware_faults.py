"""Bad input and broken parts never break the host app."""
from __future__ import annotations

import logging
import os

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from moesifasgi import MoesifMiddleware

from .conftest import read_counter, read_events


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


@pytest.mark.parametrize(
    "settings, error",
    [
        ({}, ValueError),
        ({"APPLICATION_ID": ""}, ValueError),
        ({"APPLICATION_ID": "   "}, ValueError),
        ({"APPLICATION_ID": "x", "DURABILITY": "maybe"}, ValueError),
        ({"APPLICATION_ID": "x", "BATCH_SIZE": 0}, ValueError),
        ({"APPLICATION_ID": "x", "EVENT_BATCH_TIMEOUT": -1}, ValueError),
        ({"APPLICATION_ID": "x", "EVENT_BATCH_TIMEOUT": "1"}, ValueError),
        ({"APPLICATION_ID": "x", "FLUSHER": "thread"}, ValueError),
        ({"APPLICATION_ID": "x", "SKIP": "not callable"}, TypeError),
    ],
)
def test_bad_settings_are_clear_errors_at_construction(settings, error):
    with pytest.raises(error, match="moesifasgi"):
        MoesifMiddleware(FastAPI(), settings=settings)


@pytest.mark.parametrize("settings", [None, "APPLICATION_ID=x", ["APPLICATION_ID"]])
def test_settings_that_are_not_a_dict_are_a_type_error(settings):
    with pytest.raises(TypeError, match="settings must be a dict"):
        MoesifMiddleware(FastAPI(), settings=settings)


@pytest.mark.parametrize("callback", ["IDENTIFY_USER", "IDENTIFY_COMPANY", "GET_METADATA", "GET_SESSION_TOKEN", "SKIP"])
def test_a_callback_that_raises_leaves_the_response_alone_and_drops_the_event(queue_path, callback, caplog):
    async def broken(request, response):
        raise RuntimeError("callback bug")

    client = TestClient(make_app(queue_path, **{callback: broken}))
    with caplog.at_level(logging.WARNING, logger="moesifasgi"):
        for _ in range(5):
            response = client.get("/ok")
            assert response.status_code == 200 and response.json() == {"ok": True}
    assert read_events(queue_path) == []
    assert read_counter(queue_path, "dropped") == 5
    assert len([r for r in caplog.records if callback in r.getMessage()]) == 1


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
        from moesifasgi import queue_writer

        queue_writer.flush_all()
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
        from moesifasgi import queue_writer

        queue_writer.flush_all()
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
