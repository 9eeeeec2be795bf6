"""The middleware-side glue of governance: identify, read ahead, answer, add headers."""
from __future__ import annotations

import json

from moesifasgi.capture import Exchange
from moesifasgi.governance import GovernanceDecision, GovernanceRules
from moesifasgi.governance.asgi import adding_headers, check, read_ahead, respond_blocked
from moesifasgi.settings import parse_settings

from .asgi_harness import Recorder, body_receiver, http_scope


def settings(**extra):
    return parse_settings({"APPLICATION_ID": "app", "QUEUE_PATH": "/nonexistent/q.sqlite", **extra})


def exchange_for(scope, receive):
    return Exchange(scope, receive, log_body=True, body_limit=1024, use_transaction_id=True)


def body_rule(_id="r-body"):
    return {"_id": _id, "type": "regex", "block": True,
            "regex_config": [{"conditions": [{"path": "request.body.operationName", "value": "^Drop$"}]}],
            "response": {"status": 403, "body": {"error": "no"}}}


async def test_a_body_read_ahead_is_replayed_to_the_app_and_captured_once():
    receive = body_receiver(b'{"operationName"', b': "Drop"}')
    scope = http_scope("/graphql", "POST", [(b"host", b"h"), (b"content-type", b"application/json"),
                                             (b"transfer-encoding", b"chunked")])
    exchange = exchange_for(scope, receive)
    rules = GovernanceRules.from_stored([body_rule()], None)
    decision, app_receive = await check(rules, exchange, exchange.receive, settings())
    assert decision.blocked_by == "r-body"
    first, second = await app_receive(), await app_receive()
    assert first["body"] + second["body"] == b'{"operationName": "Drop"}' and not second["more_body"]
    assert exchange.request_body.getvalue() == b'{"operationName": "Drop"}'


async def test_no_body_is_read_ahead_when_no_rule_looks_at_bodies():
    receive = body_receiver(b'{"operationName": "Drop"}')
    scope = http_scope("/graphql", "POST", [(b"host", b"h"), (b"content-length", b"25")])
    exchange = exchange_for(scope, receive)
    rules = GovernanceRules.from_stored([{"_id": "r", "type": "regex", "block": False,
                                          "response": {"headers": {"X-A": "1"}}}], None)
    decision, app_receive = await check(rules, exchange, exchange.receive, settings())
    assert app_receive == exchange.receive and exchange.request_body is None
    assert decision.headers == {"x-a": "1"}


async def test_a_body_over_the_limit_is_not_parsed_but_still_reaches_the_app_whole():
    chunks = [b"[" + b"1," * 400, b"1," * 400, b"1]"]
    receive = body_receiver(*chunks)
    body, replay = await read_ahead(receive, limit=500)
    assert body is None
    received = [await replay() for _ in chunks]
    assert b"".join(m["body"] for m in received) == b"".join(chunks)


async def test_identify_callbacks_get_the_request_and_no_response_before_the_app_runs():
    seen = []

    def identify_user(request, response):
        seen.append((request.url.path, response))
        return "alice"

    rules = GovernanceRules.from_stored(
        [{"_id": "u-rule", "type": "user", "block": True, "response": {"status": 429}}],
        {"user_rules": {"alice": [{"rules": "u-rule"}]}})
    exchange = exchange_for(http_scope("/x"), body_receiver())
    decision, _ = await check(rules, exchange, exchange.receive, settings(IDENTIFY_USER=identify_user))
    assert seen == [("/x", None)] and decision.blocked_by == "u-rule"


async def test_a_failing_identify_callback_means_unidentified():
    def identify_user(request, response):
        raise RuntimeError("boom")

    rules = GovernanceRules.from_stored(
        [{"_id": "anon", "type": "user", "block": True, "applied_to_unidentified": True,
          "response": {"status": 401}}], None)
    exchange = exchange_for(http_scope("/x"), body_receiver())
    decision, _ = await check(rules, exchange, exchange.receive, settings(IDENTIFY_USER=identify_user))
    assert decision.blocked_by == "anon"


async def test_a_blocked_answer_is_the_rules_status_headers_and_json_body():
    send = Recorder()
    decision = GovernanceDecision("r", 429, {"x-limit": "0", "content-length": "999"}, {"error": "slow down"})
    await respond_blocked(send, decision)
    start, body = send.messages
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"x-limit"] == b"0" and headers[b"content-type"] == b"application/json"
    assert json.loads(body["body"]) == {"error": "slow down"}
    assert headers[b"content-length"] == str(len(body["body"])).encode() and not body["more_body"]


async def test_rule_headers_are_added_to_the_apps_response_replacing_same_named_ones():
    send = Recorder()
    wrapped = adding_headers(send, GovernanceDecision(headers={"x-rate": "10", "x-new": "1"}))
    await wrapped({"type": "http.response.start", "status": 200,
                   "headers": [(b"X-Rate", b"app"), (b"content-type", b"text/plain")]})
    await wrapped({"type": "http.response.body", "body": b"ok"})
    assert send.messages[0]["headers"] == [(b"content-type", b"text/plain"), (b"x-rate", b"10"), (b"x-new", b"1")]
    assert send.messages[1] == {"type": "http.response.body", "body": b"ok"}
    assert adding_headers(send, GovernanceDecision()) is send


async def test_identify_callbacks_can_read_the_body_before_the_app_and_the_app_still_gets_it():
    async def identify_user(request, response):
        if request.method == "POST":
            return (await request.json())["user"]
        return "alice" if await request.body() == b"" else None

    rules = GovernanceRules.from_stored(
        [{"_id": "u-rule", "type": "user", "block": True, "response": {"status": 429}}],
        {"user_rules": {"alice": [{"rules": "u-rule"}]}})
    scope = http_scope("/x", "POST", [(b"host", b"h"), (b"content-type", b"application/json"),
                                      (b"content-length", b"17")])
    exchange = exchange_for(scope, body_receiver(b'{"user": "alice"}'))
    decision, app_receive = await check(rules, exchange, exchange.receive, settings(IDENTIFY_USER=identify_user))
    assert decision.blocked_by == "u-rule"
    assert (await app_receive())["body"] == b'{"user": "alice"}'

    exchange = exchange_for(http_scope("/x"), body_receiver())
    decision, _ = await check(rules, exchange, exchange.receive, settings(IDENTIFY_USER=identify_user))
    assert decision.blocked_by == "u-rule"  # a GET: the callback reads an empty body instead of failing
