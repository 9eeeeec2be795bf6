"""EventPipeline.persist_sync: persisting from code without an event loop of its own."""
from __future__ import annotations

import asyncio
import os
import threading

from moesifasgi.capture import new_transaction_id
from moesifasgi.pipeline import EventPipeline
from moesifasgi.settings import parse_settings

from .conftest import read_counter, read_events
from .flush_support import eventually


def pipeline(queue_path: str, **settings) -> EventPipeline:
    return EventPipeline(parse_settings({"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, **settings}))


def event(uri: str = "http://x/") -> dict:
    return {
        "request": {"time": "2026-01-01T00:00:00.000", "uri": uri, "verb": "GET", "headers": {}},
        "response": {"time": "2026-01-01T00:00:00.001", "status": 200, "headers": {}},
        "direction": "Outgoing",
        "transaction_id": new_transaction_id(),
    }


def tag(model):
    model.metadata = {"masked": True}
    return model


async def tag_async(model):
    await asyncio.sleep(0)
    return tag(model)


def test_a_plain_mask_is_applied_right_here_without_a_loop(queue_path):
    assert pipeline(queue_path, MASK_EVENT_MODEL=tag).persist_sync(event())
    [stored] = read_events(queue_path)
    assert stored["metadata"] == {"masked": True}


def test_an_async_mask_runs_on_a_private_loop_in_a_thread_without_one(queue_path):
    results = []
    worker = threading.Thread(target=lambda: results.append(pipeline(queue_path, MASK_EVENT_MODEL=tag_async).persist_sync(event())))
    worker.start()
    worker.join()
    assert results == [True]
    assert read_events(queue_path)[0]["metadata"] == {"masked": True}


async def test_an_async_mask_inside_a_running_loop_is_finished_by_a_task_on_it(queue_path):
    assert pipeline(queue_path, MASK_EVENT_MODEL=tag_async).persist_sync(event())  # scheduled, not blocking
    assert await eventually(lambda: os.path.exists(queue_path) and read_events(queue_path))
    assert read_events(queue_path)[0]["metadata"] == {"masked": True}


async def test_a_failing_async_mask_in_that_task_is_counted_as_a_drop_not_raised(queue_path):
    async def broken(model):
        raise RuntimeError("mask bug")

    events = pipeline(queue_path, MASK_EVENT_MODEL=broken)
    assert pipeline(queue_path).persist_sync(event("http://ok/"))
    assert events.persist_sync(event())
    assert await eventually(lambda: os.path.exists(queue_path) and read_counter(queue_path, "dropped") == 1)
    assert [e["request"]["uri"] for e in read_events(queue_path)] == ["http://ok/"]
    assert read_counter(queue_path, "dropped") == 1
