"""The outgoing options (callbacks, masking, sampling, bodies) and the guarantees around
them (no self-capture, one install, our errors kept from the caller), shown with `requests`."""
from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest
import requests

from moesifasgi import outgoing
from moesifasgi.outgoing import recorder as recorder_module
from moesifasgi.writers import writer_for
from moesifasgi.sampling import SamplingConfig
from moesifasgi.settings import parse_settings

from .conftest import read_counter, read_events, read_problems
from .flush_support import eventually
from .outgoing_support import capture, refused_url, target  # noqa: F401  (fixtures)


def test_the_callbacks_receive_the_requests_objects_and_fill_the_event(capture, target, queue_path):
    received = []

    def identify_user(req, res):
        received.append((type(req), type(res)))
        return req.headers["X-User"]

    capture(
        IDENTIFY_USER_OUTGOING=identify_user,
        IDENTIFY_COMPANY_OUTGOING=lambda req, res: 42,
        GET_SESSION_TOKEN_OUTGOING=lambda req, res: "tok-" + res.headers["Content-Type"],
        GET_METADATA_OUTGOING=lambda req, res: {"status_seen": res.status_code, "url": req.url},
    )
    requests.get(target.url + "/json", headers={"X-User": "ann"})
    [event] = read_events(queue_path)
    assert received == [(requests.PreparedRequest, requests.Response)]
    assert event["user_id"] == "ann" and event["company_id"] == "42"
    assert event["session_token"] == "tok-application/json"
    assert event["metadata"] == {"status_seen": 200, "url": target.url + "/json"}


def test_a_failed_call_gives_the_callbacks_no_response(capture, queue_path):
    seen = []
    capture(GET_METADATA_OUTGOING=lambda req, res: seen.append(res) or {"failed": res is None})
    with pytest.raises(requests.ConnectionError):
        requests.get(refused_url())
    [event] = read_events(queue_path)
    assert seen == [None] and event["metadata"] == {"failed": True}


def test_skip_outgoing_leaves_the_call_out(capture, target, queue_path):
    capture(SKIP_OUTGOING=lambda req, res: "/text" in req.url)
    requests.get(target.url + "/text")
    requests.get(target.url + "/json")
    assert [e["request"]["uri"] for e in read_events(queue_path)] == [target.url + "/json"]


def test_async_callbacks_run_on_a_private_loop_in_a_thread_without_one(capture, target, queue_path):
    async def identify_user(req, res):
        await asyncio.sleep(0)
        return "async-ann"

    async def mask(event):
        await asyncio.sleep(0)
        event.response.body = {"masked": True}
        return event

    capture(IDENTIFY_USER_OUTGOING=identify_user, MASK_EVENT_MODEL=mask)
    worker = threading.Thread(target=requests.get, args=(target.url + "/json",))
    worker.start()
    worker.join()
    [event] = read_events(queue_path)
    assert event["user_id"] == "async-ann" and event["response"]["body"] == {"masked": True}


async def test_async_callbacks_of_a_sync_call_inside_a_running_loop_are_finished_by_that_loop(capture, target, queue_path):
    loops = []

    async def get_metadata(req, res):
        loops.append(asyncio.get_running_loop())
        return {"from": "loop"}

    capture(GET_METADATA_OUTGOING=get_metadata)
    requests.get(target.url + "/json")  # a blocking call inside a coroutine: it happens
    assert await eventually(lambda: os.path.exists(queue_path) and read_events(queue_path))
    [event] = read_events(queue_path)
    assert event["metadata"] == {"from": "loop"}
    assert loops == [asyncio.get_running_loop()]


def test_mask_event_model_applies_to_outgoing_events(capture, target, queue_path):
    def mask(event):
        event.request.headers.pop("authorization", None)
        event.response.body = None
        return event

    capture(MASK_EVENT_MODEL=mask)
    requests.get(target.url + "/json", headers={"Authorization": "Bearer secret"})
    [event] = read_events(queue_path)
    assert "authorization" not in event["request"]["headers"] and "body" not in event["response"]


def test_server_side_sampling_applies_to_outgoing_events(capture, target, queue_path):
    settings = capture(IDENTIFY_USER_OUTGOING=lambda req, res: req.headers.get("X-User"))
    writer_for(settings.queue_path, settings.event_queue_size, settings.application_id).shared.sampling = SamplingConfig.from_dict(
        {"sample_rate": 0, "user_sample_rate": {"ann": 100}}
    )
    requests.get(target.url + "/json")
    requests.get(target.url + "/json", headers={"X-User": "ann"})
    [event] = read_events(queue_path)
    assert event["user_id"] == "ann" and event["weight"] == 1


def test_a_failing_callback_leaves_its_field_out_and_never_fails_the_call(capture, target, queue_path):
    capture(IDENTIFY_USER_OUTGOING=lambda req, res: 1 / 0, IDENTIFY_COMPANY_OUTGOING=lambda req, res: "acme")
    assert requests.get(target.url + "/json").json()["ok"] is True
    [event] = read_events(queue_path)
    assert "user_id" not in event and event["company_id"] == "acme"
    assert read_counter(queue_path, "dropped") == 0
    assert read_problems(queue_path) == {"callback-raised:IDENTIFY_USER_OUTGOING": 1}


def test_our_own_errors_never_reach_the_caller(capture, target, queue_path, monkeypatch, caplog):
    capture()
    requests.get(target.url + "/json")  # creates the queue
    monkeypatch.setattr(recorder_module, "build_event", lambda *a, **k: {}["boom"])
    response = requests.get(target.url + "/json")
    assert response.json()["ok"] is True
    assert len(read_events(queue_path)) == 1
    assert read_counter(queue_path, "dropped") == 1
    assert "unexpected error while recording an outgoing call" in caplog.text


def test_calls_to_moesif_are_never_captured(capture, target, queue_path):
    capture(BASE_URI=target.url + "/collector")
    requests.get(target.url + "/json", headers={"X-Moesif-Application-Id": "app-id"})
    requests.post(target.url + "/collector/v1/events/batch", json=[])
    requests.get(target.url + "/collectorium")  # only looks like BASE_URI
    assert [e["request"]["uri"] for e in read_events(queue_path)] == [target.url + "/collectorium"]
    recorder = recorder_module.OutgoingRecorder(parse_settings({"APPLICATION_ID": "a", "QUEUE_PATH": queue_path}))
    assert not recorder.wants("https://api.moesif.net/v1/events/batch", {})
    assert not recorder.wants("https://API.MOESIF.NET/v1/config", {})
    assert recorder.wants("https://moesif.network.example/x", {})


def test_installing_twice_never_captures_twice_and_the_last_settings_win(capture, target, queue_path):
    capture(GET_METADATA_OUTGOING=lambda req, res: {"install": 1})
    capture(GET_METADATA_OUTGOING=lambda req, res: {"install": 2})
    requests.get(target.url + "/json")
    [event] = read_events(queue_path)
    assert event["metadata"] == {"install": 2}


def test_uninstall_puts_session_send_back(capture):
    original = requests.Session.send
    capture()
    assert requests.Session.send is not original
    outgoing.uninstall()
    assert requests.Session.send is original and not outgoing.installed()


def test_a_call_made_inside_a_callback_is_not_captured(capture, target, queue_path):
    capture(GET_METADATA_OUTGOING=lambda req, res: {"inner": requests.get(target.url + "/text").status_code})
    requests.get(target.url + "/json")
    [event] = read_events(queue_path)
    assert event["request"]["uri"] == target.url + "/json" and event["metadata"] == {"inner": 200}


def test_httpx_is_still_captured_when_requests_is_missing(capture, target, queue_path, monkeypatch):
    import httpx

    monkeypatch.setitem(sys.modules, "requests", None)
    capture()
    httpx.get(target.url + "/json")
    [event] = read_events(queue_path)
    assert event["request"]["headers"]["user-agent"].startswith("python-httpx")


def test_a_request_requests_refuses_gets_requests_own_error_and_is_not_recorded(capture, target, queue_path):
    capture()
    with pytest.raises(ValueError, match="PreparedRequests"):
        requests.Session().send(requests.Request("GET", target.url + "/json"))
    requests.get(target.url + "/json")
    assert len(read_events(queue_path)) == 1 and read_counter(queue_path, "dropped") == 0
