"""The Django, Flask and Litestar examples record every call, 404s included, as the
README's "Frameworks and servers" section says (so that the examples cannot rot)."""
from __future__ import annotations

import importlib
import sys

import pytest
from starlette.testclient import TestClient

from tests.conftest import read_events


@pytest.mark.parametrize("module, needs", [
    ("examples.django_app", "django"),
    ("examples.flask_app", "flask"),
    ("examples.litestar_app", "litestar"),
])
def test_the_example_records_every_call_with_its_status_user_and_masked_body(monkeypatch, tmp_path, module, needs):
    pytest.importorskip(needs)
    queue = str(tmp_path / "queue.sqlite")
    monkeypatch.setenv("MOESIF_QUEUE_PATH", queue)
    sys.modules.pop(module, None)  # built with this test's queue path
    app = importlib.import_module(module).app

    client = TestClient(app)  # no lifespan: Django's handler refuses it (servers carry on without)
    assert client.get("/items/7?q=x", headers={"x-user-id": "u-1"}).json() == {"id": 7, "q": "x"}
    created = client.post("/orders", json={"items": [1, 2], "password": "hunter2"})
    assert created.status_code == 201 and created.json()["items"] == [1, 2]
    assert client.get("/no-such-page").status_code == 404

    events = read_events(queue)
    assert [(e["request"]["verb"], e["response"]["status"]) for e in events] == [
        ("GET", 200), ("POST", 201), ("GET", 404)]
    assert events[0]["user_id"] == "u-1"
    assert events[1]["request"]["body"]["items"] == [1, 2]
    assert "hunter2" not in str(events[1])
