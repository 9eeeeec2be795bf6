"""Governance through the real middleware: blocked calls never reach the app, and say so."""
from __future__ import annotations

import json
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from fastapi.testclient import TestClient

from moesifasgi import MoesifMiddleware, storage, writers

from .conftest import read_events
from .flush_support import PATIENCE


RULES = [
    {"_id": "no-admin", "type": "regex", "block": True,
     "regex_config": [{"conditions": [{"path": "request.route", "value": "^/admin"}]}],
     "response": {"status": 403, "headers": {"X-Blocked": "admin"}, "body": {"error": "admins only"}}},
    {"_id": "gql-drop", "type": "regex", "block": True,
     "regex_config": [{"conditions": [{"path": "request.body.operationName", "value": "^DropAll$"}]}],
     "response": {"status": 400, "body": {"errors": [{"message": "not allowed"}]}}},
    {"_id": "quota", "type": "user", "block": True, "variables": [{"name": "0", "path": "body.plan"}],
     "response": {"status": 429, "headers": {"X-Plan": "{{0}}"}, "body": {"error": "plan {{0}} is over quota"}}},
    {"_id": "env-header", "type": "regex", "block": False, "response": {"headers": {"X-Env": "prod"}}},
]
CONFIG = {"sample_rate": 100, "user_rules": {"over-quota": [{"rules": "quota", "values": {"0": "free"}}]}}


def store_rules(path: str) -> None:
    conn = storage.connect(path)
    now = time.time()
    for key, value in (("rules", RULES), ("config", CONFIG)):
        conn.execute("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)", (key, json.dumps(value), now))
    conn.close()


def governed_client(queue_path: str, calls: list, identified: list) -> TestClient:
    async def endpoint(request: Request):
        calls.append((request.url.path, await request.body()))
        return JSONResponse({"ok": True}, headers={"X-Env": "from-app"})

    def identify_user(request, response):
        identified.append(response is None)
        return request.headers.get("x-user")

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])
    app.add_middleware(MoesifMiddleware, settings={
        "APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, "FLUSHER": "external",
        "BASE_URI": "http://127.0.0.1:9", "IDENTIFY_USER": identify_user})
    client = TestClient(app)
    client.get("/warm-up")  # starts this process's writer, which loads the stored rules
    writer = writers.writer_for(queue_path, 1_000_000, "app-id")  # the middleware's own writer
    deadline = time.monotonic() + PATIENCE
    while writer.shared.governance is None and time.monotonic() < deadline:
        writer._wakeup.set()
        time.sleep(0.02)
    assert writer.shared.governance is not None
    calls.clear()
    identified.clear()
    return client


def test_a_blocked_call_gets_the_rules_answer_and_is_recorded_with_blocked_by(queue_path):
    store_rules(queue_path)
    calls, identified = [], []
    client = governed_client(queue_path, calls, identified)
    response = client.get("/admin/users")
    assert response.status_code == 403
    assert response.json() == {"error": "admins only"}
    assert response.headers["x-blocked"] == "admin" and response.headers["x-env"] == "prod"
    assert calls == []
    event = read_events(queue_path)[-1]
    assert event["blocked_by"] == "no-admin"
    assert event["response"]["status"] == 403
    assert event["transaction_id"] == response.headers["x-moesif-transaction-id"]


def test_a_user_in_a_blocked_cohort_gets_the_substituted_answer(queue_path):
    store_rules(queue_path)
    calls, identified = [], []
    client = governed_client(queue_path, calls, identified)
    response = client.get("/things", headers={"X-User": "over-quota"})
    assert (response.status_code, response.json()) == (429, {"error": "plan free is over quota"})
    assert response.headers["x-plan"] == "free"
    assert calls == [] and identified[0] is True  # identified before the app, without a response
    ok = client.get("/things", headers={"X-User": "fine"})
    assert ok.status_code == 200 and calls == [("/things", b"")]


def test_a_graphql_operation_is_blocked_and_other_operations_reach_the_app_with_their_body(queue_path):
    store_rules(queue_path)
    calls, identified = [], []
    client = governed_client(queue_path, calls, identified)
    blocked = client.post("/graphql", json={"query": "mutation DropAll { x }", "operationName": "DropAll"})
    assert blocked.status_code == 400 and calls == []
    body = json.dumps({"query": "{ things }", "operationName": "List"}).encode()
    passed = client.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert passed.status_code == 200 and calls == [("/graphql", body)]
    event = read_events(queue_path)[-1]
    assert event["request"]["body"] == {"query": "{ things }", "operationName": "List"}
    assert "blocked_by" not in event


def test_non_blocking_rule_headers_are_added_to_the_apps_response(queue_path):
    store_rules(queue_path)
    calls, identified = [], []
    client = governed_client(queue_path, calls, identified)
    response = client.get("/hello")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert response.headers["x-env"] == "prod"  # the rule's value replaces the app's
    assert read_events(queue_path)[-1]["response"]["headers"]["x-env"] == "prod"
