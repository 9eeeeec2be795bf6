"""Secrets never reach the disk, Moesif or the DEBUG log: a real queue, a real loopback collector.

Each body form gets its own secret. After the calls, every byte of the queue
files is searched, every stored event is decoded (base64 bodies included), the
queue is drained by a real `moesif-flush drain` process into the loopback
collector, and what the collector received is searched the same way.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest
import requests
from starlette.testclient import TestClient

from moesifasgi import MoesifMiddleware, writers
from moesifasgi.field_masks import MASK_MARKER
from moesifasgi.storage import queue_store
from moesifasgi.testing.local_collector import LocalCollector

from .flush_support import APP_ID, cli_process
from .outgoing_support import capture, target  # noqa: F401  (fixtures)

TAG = "S3CR"  # every secret starts with it; no 4 bytes of it may be stored anywhere
MAX_BODY = 2048


def secret(form: str) -> str:
    return f"{TAG}ET-{form}-q7"


def _cut_in_value() -> bytes:
    # Truncation at MAX_BODY falls 5 characters into the secret: "S3CRE" would be kept.
    head = '{"pad":"%s","password":"'
    pad = "x" * (MAX_BODY - 5 - len(head % ""))
    return ((head % pad) + secret("cut-in-value") + '"}').encode()


INCOMING_BODIES = {
    "json": ("application/json",
             json.dumps({"user": "a", "password": secret("json"), "deep": [{"x": {"password": secret("json")}}]})),
    "cut-in-value": ("application/json", _cut_in_value().decode()),
    "too-large": ("application/json", '{"password":"%s","pad":"%s"}' % (secret("too-large"), "y" * 3000)),
    "invalid-json": ("application/json", '{"user":"a","password":"%s",}' % secret("invalid-json")),
    "nan-json": ("application/json", '{"ratio":NaN,"password":"%s"}' % secret("nan-json")),
    "form": ("application/x-www-form-urlencoded", "user=a&password=%s&x=1" % secret("form")),
    "text": ("text/plain", "user: a\npassword: %s\nx: 1\n" % secret("text")),
    "xml": ("application/xml", "<login><user>a</user><ns:Password type='x'>%s</ns:Password></login>" % secret("xml")),
}
FORMS = sorted(INCOMING_BODIES) + ["query", "multipart", "headers", "authorization"]


def _jwt(payload: Dict[str, Any]) -> str:
    def part(data: Dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(payload)}.{TAG}sig"


async def echo_app(scope, receive, send):
    """Answers every call with the request's own body and content type, and a secret header."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    content_type = dict(scope["headers"]).get(b"content-type", b"application/json")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"x-token", secret("headers").encode())]})
    await send({"type": "http.response.body", "body": body or b'{"ok": true}'})


def _bodies_of(event: Dict[str, Any]) -> List[bytes]:
    found = []
    for part in ("request", "response"):
        section = event.get(part) or {}
        if section.get("transfer_encoding") == "base64" and isinstance(section.get("body"), str):
            found.append(base64.b64decode(section["body"]))
    return found


def searchable(events: List[Dict[str, Any]]) -> bytes:
    """The events as JSON plus every base64 body decoded."""
    return b"\n".join(json.dumps(e).encode() + b"\n" + b"\n".join(_bodies_of(e)) for e in events)


def queue_bytes(path: str) -> bytes:
    """Every byte of the queue's files, and every stored event decoded."""
    raw = b""
    for name in sorted(os.listdir(os.path.dirname(path))):
        if name.startswith(os.path.basename(path)):
            with open(os.path.join(os.path.dirname(path), name), "rb") as handle:
                raw += handle.read()
    conn = sqlite3.connect(path)
    try:
        events = [json.loads(e.body) for e in queue_store.stored_events(conn)]
    finally:
        conn.close()
    return raw + searchable(events)


def drain(path: str, collector: LocalCollector) -> None:
    process = cli_process("drain", queue=path, base_uri=collector.url)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("moesifasgi"):  # ours; the test client's httpx logs its own URLs
            self.lines.append(logging.Formatter("%(name)s %(message)s").format(record))


@pytest.fixture(scope="module")
def incoming(tmp_path_factory) -> Iterator[Dict[str, Any]]:
    """Every form sent once through the middleware; the queue drained to a loopback collector."""
    path = str(tmp_path_factory.mktemp("privacy") / "queue.sqlite")
    seen_by_mask: List[str] = []

    def mask(event):
        seen_by_mask.append(json.dumps(event.to_dictionary()) + "".join(
            b.decode("latin-1") for b in _bodies_of(event.to_dictionary())))
        event.metadata = {"masked_by": "MASK_EVENT_MODEL"}
        return event

    app = MoesifMiddleware(echo_app, settings={
        "APPLICATION_ID": APP_ID, "QUEUE_PATH": path, "DEBUG": True, "MAX_BODY_BYTES": MAX_BODY,
        "REQUEST_BODY_MASKS": ["password"], "RESPONSE_BODY_MASKS": ["password"],
        "REQUEST_HEADER_MASKS": ["X-Secret-Header", "Authorization"], "RESPONSE_HEADER_MASKS": ["x-token"],
        "MASK_EVENT_MODEL": mask,
    })
    logs = Captured()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    try:
        with TestClient(app) as client:
            for form, (content_type, body) in INCOMING_BODIES.items():
                assert client.post(f"/{form}", content=body, headers={"content-type": content_type}).status_code == 200
            assert client.get("/query", params={"password": secret("query"), "page": "1"}).status_code == 200
            assert client.post("/multipart", data={"password": secret("multipart"), "user": "a"},
                               files={"file": ("a.txt", b"contents")}).status_code == 200
            assert client.get("/headers", headers={"x-secret-header": secret("headers")}).status_code == 200
            token = _jwt({"sub": "user-42", "password": secret("authorization")})
            assert client.get("/authorization", headers={"authorization": f"Bearer {token}"}).status_code == 200
        writers.flush_all()
        stored = queue_bytes(path)
        conn = sqlite3.connect(path)
        events = [json.loads(e.body) for e in queue_store.stored_events(conn)]
        conn.close()
        with LocalCollector(application_id=APP_ID) as collector:
            drain(path, collector)
            received = list(collector.events)
        yield {"stored": stored, "events": events, "received": received, "after_drain": queue_bytes(path),
               "logs": "\n".join(logs.lines), "seen_by_mask": seen_by_mask}
    finally:
        root.removeHandler(logs)
        root.setLevel(old_level)
        writers.close_all()


def _event_for(events: List[Dict[str, Any]], form: str) -> Dict[str, Any]:
    matching = [e for e in events if e["request"]["uri"].split("?")[0].endswith("/" + form)]
    assert len(matching) == 1, [e["request"]["uri"] for e in events]
    return matching[0]


@pytest.mark.parametrize("form", FORMS)
def test_no_secret_of_any_body_form_reaches_the_queue_files_or_the_collector(incoming, form):
    stored_event = _event_for(incoming["events"], form)
    received_event = _event_for(incoming["received"], form)
    for where, data in [("queue files", incoming["stored"]), ("queue after drain", incoming["after_drain"]),
                        ("event", searchable([stored_event])), ("collector", searchable([received_event]))]:
        assert secret(form).encode() not in data, where
    assert MASK_MARKER in json.dumps(received_event) + "".join(b.decode("latin-1") for b in _bodies_of(received_event))


def test_nothing_starting_like_a_secret_is_stored_sent_or_logged_at_all(incoming):
    assert len(incoming["received"]) == len(FORMS)
    for where in ("stored", "after_drain"):
        assert TAG.encode() not in incoming[where], where
    assert TAG.encode() not in searchable(incoming["received"])
    assert TAG not in incoming["logs"]
    assert "queueing event POST http://testserver/json -> 200" in incoming["logs"]  # DEBUG did log, without the secrets


def test_mask_event_model_runs_after_the_declarative_masks_and_its_result_is_what_is_sent(incoming):
    assert len(incoming["seen_by_mask"]) == len(FORMS)
    assert not any(TAG in seen for seen in incoming["seen_by_mask"])
    assert all(e.get("metadata") == {"masked_by": "MASK_EVENT_MODEL"} for e in incoming["received"])


def test_the_user_id_still_comes_from_the_authorization_header_that_is_masked(incoming):
    event = _event_for(incoming["received"], "authorization")
    assert event["user_id"] == "user-42"
    assert event["request"]["headers"]["authorization"] == MASK_MARKER


def test_the_rest_of_each_body_is_kept(incoming):
    assert _event_for(incoming["received"], "json")["request"]["body"]["user"] == "a"
    assert b"user=a&password=" in _bodies_of(_event_for(incoming["received"], "form"))[0]
    assert _event_for(incoming["received"], "query")["request"]["uri"].endswith(f"password={MASK_MARKER}&page=1")
    assert _event_for(incoming["received"], "multipart")["request"]["body"]["user"] == "a"


# -- outgoing calls ---------------------------------------------------------------------------

def _outgoing_calls(url: str) -> None:
    credential = secret("outgoing")
    requests.post(f"{url}/echo?api_key={credential}&page=2", json={"password": credential, "user": "a"},
                  headers={"Authorization": f"Bearer {credential}", "X-Api-Key": credential})
    requests.post(f"{url}/echo", data={"client_secret": credential, "grant_type": "client_credentials"},
                  cookies={"session": credential})
    httpx.post(f"{url.replace('http://', f'http://bot:{credential}@')}/echo",
               content=b'{"password": "%s",}' % credential.encode(), headers={"content-type": "application/json"})
    httpx.get(f"{url}/json", params={"access_token": credential}, auth=("user", credential))


def test_outgoing_credentials_and_masked_fields_never_reach_the_queue_or_the_collector(capture, target, queue_path,
                                                                                       caplog):
    capture(APPLICATION_ID=APP_ID, REQUEST_BODY_MASKS=["password"], RESPONSE_BODY_MASKS=["password"], DEBUG=True)
    with caplog.at_level(logging.DEBUG):
        _outgoing_calls(target.url)
    writers.flush_all()
    basic = base64.b64encode(f"user:{secret('outgoing')}".encode())
    stored = queue_bytes(queue_path)
    conn = sqlite3.connect(queue_path)
    assert len(list(queue_store.stored_events(conn))) == 4
    conn.close()
    with LocalCollector(application_id=APP_ID) as collector:
        drain(queue_path, collector)
        received = searchable(collector.events)
        assert len(collector.events) == 4
    for data in (stored, received, queue_bytes(queue_path)):
        assert TAG.encode() not in data and basic not in data
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("moesifasgi")]
    assert ours and not any(TAG in line for line in ours)
    assert MASK_MARKER.encode() in received


def test_outgoing_credentials_are_kept_when_redaction_is_turned_off(capture, target, queue_path):
    capture(REDACT_OUTGOING_CREDENTIALS=False)
    requests.get(f"{target.url}/json?api_key={secret('off')}", headers={"Authorization": f"Bearer {secret('off')}"})
    writers.flush_all()
    conn = sqlite3.connect(queue_path)
    body = next(queue_store.stored_events(conn)).body
    conn.close()
    event = json.loads(body)
    assert event["request"]["headers"]["authorization"] == f"Bearer {secret('off')}"
    assert event["request"]["uri"].endswith(f"api_key={secret('off')}")


# -- the README's hand-written mask ---------------------------------------------------------------

def _readme_mask_event():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in readme.split("```python\n")[1:]]
    (source,) = [block for block in blocks if "def mask_event(" in block]
    namespace: Dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    return namespace["mask_event"]


def test_the_readme_mask_example_lets_no_password_through_in_any_body_form(tmp_path):
    path = str(tmp_path / "queue.sqlite")
    app = MoesifMiddleware(echo_app, settings={
        "APPLICATION_ID": APP_ID, "QUEUE_PATH": path, "MAX_BODY_BYTES": MAX_BODY,
        "MASK_EVENT_MODEL": _readme_mask_event(),
    })
    with TestClient(app) as client:
        for form, (content_type, body) in INCOMING_BODIES.items():
            assert client.post(f"/{form}", content=body, headers={"content-type": content_type}).status_code == 200
        client.post("/multipart", data={"password": secret("multipart")}, files={"file": ("a.txt", b"x")})
    writers.flush_all()
    # The echo app's secret response header is not a body: this mask is not about it.
    stored = queue_bytes(path).replace(secret("headers").encode(), b"")
    assert stored.count(b'"transaction_id"') >= len(INCOMING_BODIES) + 1
    assert TAG.encode() not in stored


@pytest.mark.parametrize("durability", ["batched", "strict"])
def test_without_mask_event_model_the_declarative_masks_still_hold_on_every_path(tmp_path, durability):
    path = str(tmp_path / "queue.sqlite")
    app = MoesifMiddleware(echo_app, settings={
        "APPLICATION_ID": APP_ID, "QUEUE_PATH": path, "MAX_BODY_BYTES": MAX_BODY, "DURABILITY": durability,
        "REQUEST_BODY_MASKS": ["password"], "RESPONSE_BODY_MASKS": ["password"], "RESPONSE_HEADER_MASKS": ["x-token"],
    })
    with TestClient(app) as client:
        for form, (content_type, body) in INCOMING_BODIES.items():
            assert client.post(f"/{form}", content=body, headers={"content-type": content_type}).status_code == 200
        client.get("/query", params={"password": secret("query")})
    writers.flush_all()
    stored = queue_bytes(path)
    assert stored.count(b'"transaction_id"') >= len(INCOMING_BODIES) + 1
    assert TAG.encode() not in stored
