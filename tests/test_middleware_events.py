"""The event a call becomes: fields, ids, bodies, identities, as the original package sends them."""
from __future__ import annotations

import base64
import gzip
import json
import re

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.responses import PlainTextResponse, Response

from moesifasgi import MoesifMiddleware

from .conftest import read_events

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")


def make_app(queue_path: str, **settings) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def get_item(item_id: int):
        return {"id": item_id, "name": "widget"}

    @app.post("/echo")
    async def echo(request: Request):
        return Response(await request.body(), media_type=request.headers.get("content-type"))

    @app.get("/text")
    def text():
        return PlainTextResponse("hello, not json")

    app.add_middleware(MoesifMiddleware, settings={"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path, **settings})
    return app


def jwt(payload: dict) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(payload)}.signature"


def test_a_json_call_becomes_one_event_in_moesif_format(queue_path):
    client = TestClient(make_app(queue_path, API_VERSION="1.2.3"))
    response = client.get("/items/7?verbose=1", headers={"X-Forwarded-For": "unknown, 203.0.113.9, 10.0.0.1"})
    assert response.json() == {"id": 7, "name": "widget"}

    [event] = read_events(queue_path)
    request, resp = event["request"], event["response"]
    assert request["uri"] == "http://testserver/items/7?verbose=1"
    assert request["verb"] == "GET"
    assert request["api_version"] == "1.2.3"
    assert request["ip_address"] == "203.0.113.9"
    assert request["headers"]["x-forwarded-for"] == "unknown, 203.0.113.9, 10.0.0.1"
    assert TIME.match(request["time"]) and TIME.match(resp["time"])
    assert resp["time"] >= request["time"]
    assert resp["status"] == 200
    assert resp["body"] == {"id": 7, "name": "widget"}
    assert resp["transfer_encoding"] == "json"
    assert resp["headers"]["content-type"] == "application/json"
    assert event["direction"] == "Incoming"
    assert event["weight"] == 1
    assert "body" not in request


def test_one_transaction_id_is_returned_to_the_client_and_stored_in_the_event(queue_path):
    client = TestClient(make_app(queue_path))
    response = client.get("/items/1")
    txid = response.headers["x-moesif-transaction-id"]
    [event] = read_events(queue_path)
    assert event["transaction_id"] == txid
    assert event["request"]["headers"]["x-moesif-transaction-id"] == txid
    assert event["response"]["headers"]["x-moesif-transaction-id"] == txid


def test_an_incoming_transaction_id_is_kept(queue_path):
    client = TestClient(make_app(queue_path))
    response = client.get("/items/1", headers={"X-Moesif-Transaction-Id": "abc-123"})
    assert response.headers["x-moesif-transaction-id"] == "abc-123"
    assert read_events(queue_path)[0]["transaction_id"] == "abc-123"


def test_disabled_transaction_id_sends_no_header_but_the_event_keeps_an_id(queue_path):
    client = TestClient(make_app(queue_path, DISABLED_TRANSACTION_ID=True))
    response = client.get("/items/1")
    assert "x-moesif-transaction-id" not in response.headers
    [event] = read_events(queue_path)
    assert len(event["transaction_id"]) == 36
    assert "x-moesif-transaction-id" not in event["request"]["headers"]


def test_a_json_request_body_is_parsed_and_a_text_body_is_base64(queue_path):
    client = TestClient(make_app(queue_path))
    client.post("/echo", content=b'{"a": [1, 2]}', headers={"content-type": "application/json"})
    client.post("/echo", content=b"\x00\x01binary\xff", headers={"content-type": "application/octet-stream"})
    client.get("/text")
    first, second, third = read_events(queue_path)
    assert first["request"]["body"] == {"a": [1, 2]} and first["request"]["transfer_encoding"] == "json"
    assert second["request"]["transfer_encoding"] == "base64"
    assert base64.b64decode(second["request"]["body"]) == b"\x00\x01binary\xff"
    assert base64.b64decode(third["response"]["body"]) == b"hello, not json"


def test_a_gzip_request_body_is_decoded_before_encoding(queue_path):
    client = TestClient(make_app(queue_path))
    client.post(
        "/echo",
        content=gzip.compress(b'{"zipped": true}'),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    [event] = read_events(queue_path)
    assert event["request"]["body"] == {"zipped": True}


def test_log_body_false_records_no_bodies(queue_path):
    client = TestClient(make_app(queue_path, LOG_BODY=False))
    client.post("/echo", content=b'{"secret": 1}', headers={"content-type": "application/json"})
    [event] = read_events(queue_path)
    assert "body" not in event["request"] and "body" not in event["response"]


def test_callbacks_plain_and_async_fill_the_identity_fields(queue_path):
    seen = {}

    def identify_user(request, response):
        seen["user"] = (request.url.path, response.status_code, response.headers["content-type"])
        return "user-1"

    async def identify_company(request, response):
        seen["json"] = await request.json()
        return "company-9"

    async def get_metadata(request, response):
        return {"region": "eu", "n": 3}

    def get_session_token(request, response):
        return request.headers.get("x-session")

    client = TestClient(
        make_app(
            queue_path,
            IDENTIFY_USER=identify_user,
            IDENTIFY_COMPANY=identify_company,
            GET_METADATA=get_metadata,
            GET_SESSION_TOKEN=get_session_token,
        )
    )
    client.post("/echo", json={"hello": "world"}, headers={"x-session": "sess-42"})
    [event] = read_events(queue_path)
    assert event["user_id"] == "user-1"
    assert event["company_id"] == "company-9"
    assert event["metadata"] == {"region": "eu", "n": 3}
    assert event["session_token"] == "sess-42"
    assert seen == {"user": ("/echo", 200, "application/json"), "json": {"hello": "world"}}


def test_skip_drops_matching_calls_only(queue_path):
    async def skip(request, response):
        return request.url.path.startswith("/text")

    client = TestClient(make_app(queue_path, SKIP=skip))
    client.get("/text")
    client.get("/items/3")
    assert [e["request"]["uri"] for e in read_events(queue_path)] == ["http://testserver/items/3"]


def test_user_id_falls_back_to_the_authorization_header(queue_path):
    client = TestClient(make_app(queue_path))
    client.get("/items/1", headers={"Authorization": "Bearer " + jwt({"sub": "jwt-user"})})
    client.get("/items/1", headers={"Authorization": "Basic " + base64.b64encode(b"basic-user:pw").decode()})
    client.get("/items/1", headers={"Authorization": jwt({"sub": "bare-user"})})
    client.get("/items/1")
    assert [e.get("user_id") for e in read_events(queue_path)] == ["jwt-user", "basic-user", "bare-user", None]


def test_custom_authorization_header_names_are_tried_in_order_with_a_custom_field(queue_path):
    client = TestClient(
        make_app(queue_path, AUTHORIZATION_HEADER_NAME="X-Api-Token, X-Other", AUTHORIZATION_USER_ID_FIELD="uid")
    )
    client.get("/items/1", headers={"X-Other": "Bearer " + jwt({"uid": "second"})})
    client.get(
        "/items/1",
        headers={"X-Other": "Bearer " + jwt({"uid": "second"}), "X-Api-Token": "Bearer " + jwt({"uid": "first"})},
    )
    assert [e.get("user_id") for e in read_events(queue_path)] == ["second", "first"]


def test_identify_user_wins_over_the_authorization_header(queue_path):
    client = TestClient(make_app(queue_path, IDENTIFY_USER=lambda req, resp: "from-callback"))
    client.get("/items/1", headers={"Authorization": "Bearer " + jwt({"sub": "jwt-user"})})
    assert read_events(queue_path)[0]["user_id"] == "from-callback"


def test_an_app_exception_is_recorded_as_a_500_and_still_raised(queue_path):
    app = make_app(queue_path)

    @app.get("/boom")
    def boom():
        raise RuntimeError("app bug")

    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/boom").status_code == 500
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 500
