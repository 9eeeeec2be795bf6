from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import uuid
from typing import Any, List, Tuple

import pytest

from moesifasgi.callbacks import request_for, response_for
from moesifasgi.capture import Exchange, new_transaction_id


def test_transaction_ids_are_version_4_uuids_in_canonical_form_and_never_repeat() -> None:
    ids = [new_transaction_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:50] + ids[-50:]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_threads_drawing_transaction_ids_at_once_each_get_ids_of_their_own() -> None:
    # Outgoing calls are captured on whatever thread makes them. With the GIL
    # handed over every microsecond, threads empty a draw while another one is
    # refilling it: none may fail, and no id may be handed out twice.
    results: List[List[str]] = []
    failures: List[BaseException] = []

    def draw() -> None:
        try:
            results.append([new_transaction_id() for _ in range(20000)])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=draw) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
    ids = [text for batch in results for text in batch]
    assert len(ids) == 16 * 20000
    assert len(set(ids)) == len(ids)


def _ids_in_child(out: Any) -> None:
    out.put([new_transaction_id() for _ in range(100)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_transaction_ids_of_its_own() -> None:
    before = new_transaction_id()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_ids_in_child, args=(out,))
    child.start()
    theirs = out.get(timeout=60)
    child.join(60)
    ours = [new_transaction_id() for _ in range(100)]
    # The parent had drawn 256 ids' worth of randomness before forking: the
    # child must not hand out the rest of that draw.
    assert not set(theirs) & set(ours + [before])


def test_transaction_ids_do_not_count_calls() -> None:
    # The id goes to clients in X-Moesif-Transaction-Id: consecutive ids must not
    # share a prefix or step by one, which would tell how many calls a worker served.
    first, second = new_transaction_id(), new_transaction_id()
    assert first[:24] != second[:24]
    assert abs(int(first[24:], 16) - int(second[24:], 16)) > 1


def _exchange(request_headers: List[Tuple[bytes, bytes]], response_headers: List[Tuple[bytes, bytes]],
              body: bytes) -> Exchange:
    scope = {"type": "http", "method": "GET", "scheme": "http", "path": "/a", "raw_path": b"/a",
             "root_path": "", "query_string": b"", "headers": request_headers,
             "server": ("127.0.0.1", 8000), "client": ("10.0.0.1", 5000)}

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    exchange = Exchange(scope, receive, log_body=True, body_limit=1000, use_transaction_id=True)
    exchange.on_response_start({"type": "http.response.start", "status": 201, "headers": response_headers})
    exchange.on_response_body({"type": "http.response.body", "body": body})
    return exchange


def test_callbacks_read_headers_as_starlette_answers_them_missing_and_repeated_names_included() -> None:
    exchange = _exchange([(b"x-user-id", b"ann"), (b"x-tag", b"one"), (b"x-tag", b"two")],
                         [(b"content-type", b"application/json; charset=utf-8"), (b"set-cookie", b"a=1"),
                          (b"set-cookie", b"b=2")], b'{"ok": true}')
    request, response = request_for(exchange), response_for(exchange)
    assert request.headers.get("X-User-Id") == "ann"
    assert request.headers.get("x-tag") == "one"  # the first, as Starlette's Headers gives it
    assert request.headers.getlist("x-tag") == ["one", "two"]
    assert request.headers.get("authorization") is None
    assert request.headers.get("authorization", "none") == "none"
    assert "x-user-id" in request.headers and "authorization" not in request.headers
    assert response.status_code == 201
    assert response.headers.get("set-cookie") == "a=1"
    assert response.headers.get("x-missing") is None
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.media_type == "application/json"
    assert response.body == b'{"ok": true}'


def test_the_response_callbacks_get_has_no_body_when_none_was_kept() -> None:
    exchange = _exchange([], [], b"")
    exchange.response_body = None
    response = response_for(exchange)
    assert response.body is None and response.media_type is None and response.status_code == 201
    exchange.status = None
    assert response_for(exchange).status_code == 500


def test_header_names_are_lower_cased_the_same_whether_seen_before_or_not() -> None:
    from moesifasgi.capture import decode_headers

    raw = [(b"X-Seen-Once", b"a"), (bytearray(b"X-Mutable"), b"b"), (b"x-seen-once", b"c")]
    first = decode_headers(raw)
    again = decode_headers(raw)
    assert first == again == {"x-seen-once": "a, c", "x-mutable": "b"}


def test_a_flood_of_distinct_header_names_keeps_the_name_cache_bounded() -> None:
    from moesifasgi import capture

    for i in range(5 * capture._NAMES_MAX):
        assert capture.decode_headers([(f"X-Odd-{i}".encode(), b"v")]) == {f"x-odd-{i}": "v"}
        assert len(capture._NAMES) <= capture._NAMES_MAX
    assert capture.decode_headers([(b"Host", b"h")]) == {"host": "h"}


def test_a_transaction_id_header_the_app_set_in_any_case_is_sent_as_it_is_and_not_added_twice() -> None:
    exchange = Exchange({"type": "http", "headers": []}, None, log_body=True, body_limit=100, use_transaction_id=True)
    own = [(b"X-Moesif-Transaction-ID", b"mine"), (b"x-moesif-transaction-idx", b"other")]
    message = {"type": "http.response.start", "status": "201", "headers": own}
    assert exchange.on_response_start(message) is message
    assert exchange.response_raw_headers == own and exchange.status == 201

    fresh = Exchange({"type": "http", "headers": []}, None, log_body=True, body_limit=100, use_transaction_id=True)
    apps = [(b"x-moesif-transaction-idx", b"other")]
    sent = fresh.on_response_start({"type": "http.response.start", "status": 200, "headers": apps})
    assert sent["headers"] == [(b"x-moesif-transaction-idx", b"other"),
                               (b"x-moesif-transaction-id", fresh.transaction_id.encode())]
    assert apps == [(b"x-moesif-transaction-idx", b"other")]  # the app's list is left alone


def test_transaction_ids_keep_every_random_bit_around_the_version_and_variant() -> None:
    ids = [new_transaction_id() for _ in range(4000)]
    # Only the version nibble and the variant's two top bits are fixed, as in uuid4().
    assert {text[14] for text in ids} == {"4"}
    assert {text[19] for text in ids} == set("89ab")
    for position in (0, 15, 16, 20, 35):
        assert {text[position] for text in ids} == set("0123456789abcdef"), position
