from __future__ import annotations

import base64
import gzip
import json
import random
import tracemalloc

import pytest

from moesifasgi.bodies import MAX_BODY_BYTES, BodyBuffer, encode_body, truncation_marker

MB = 1024 * 1024
CHUNK = 64 * 1024


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# -- encode_body ----------------------------------------------------------


def test_the_per_body_cap_keeps_two_base64_bodies_well_under_moesifs_1_mb_event_limit():
    assert 2 * (MAX_BODY_BYTES * 4 // 3 + 4) < 0.7 * MB


@pytest.mark.parametrize("data", [b"", None])
def test_an_empty_body_gives_no_body_and_no_encoding(data):
    assert encode_body(data, "application/json", None) == (None, None)


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        (b'{"a": 1, "b": [true, null]}', {"a": 1, "b": [True, None]}),
        (b"[1, 2, 3]", [1, 2, 3]),
        (b' \r\n\t {"spaced": "out"}  ', {"spaced": "out"}),
        ('{"name": "Zoë ☃"}'.encode(), {"name": "Zoë ☃"}),
        (b'{"emoji": "\\ud83d\\ude00"}', {"emoji": "\U0001f600"}),
    ],
)
def test_json_text_is_sent_parsed(data, parsed):
    assert encode_body(data, "application/json", None) == (parsed, "json")


def test_json_is_detected_by_content_not_by_content_type():
    assert encode_body(b'{"a": 1}', "text/plain", None) == ({"a": 1}, "json")


@pytest.mark.parametrize(
    "data",
    [
        b"hello world",
        b"<html><body>{}</body></html>",
        b'"just a string"',
        b"42",
        b"{not json",
        b"[1, 2,",
        b'{"a": NaN}',
        b"[Infinity]",
        b'{"lone": "\\ud800"}',
        b"\xff\xfe{\x00",
        bytes(range(256)),
        b"   ",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_anything_else_is_sent_as_standard_base64_of_the_exact_bytes(data):
    body, encoding = encode_body(data, "application/json", None)
    assert encoding == "base64"
    assert unb64(body) == data


def test_a_declared_charset_is_used_to_read_json():
    data = '{"city": "Zürich"}'.encode("latin-1")
    assert encode_body(data, "application/json; charset=ISO-8859-1", None) == ({"city": "Zürich"}, "json")


def test_a_gzip_json_body_is_decompressed_and_sent_parsed():
    data = gzip.compress(b'{"zipped": true}')
    assert encode_body(data, "application/json", "gzip") == ({"zipped": True}, "json")


def test_a_gzip_text_body_is_sent_as_base64_of_the_decompressed_bytes():
    body, encoding = encode_body(gzip.compress(b"plain text"), "text/plain", "x-gzip")
    assert (unb64(body), encoding) == (b"plain text", "base64")


def test_concatenated_gzip_members_are_all_decompressed():
    data = gzip.compress(b'{"a": ') + gzip.compress(b"1}")
    assert encode_body(data, None, "gzip") == ({"a": 1}, "json")


def test_a_body_labelled_gzip_that_is_not_gzip_is_sent_as_base64_of_the_raw_bytes():
    body, encoding = encode_body(b'{"not": "zipped"}', None, "gzip")
    assert (unb64(body), encoding) == (b'{"not": "zipped"}', "base64")


def test_a_gzip_stream_that_ends_early_keeps_what_decompresses_and_is_marked_truncated():
    original = json.dumps({"items": list(range(5000))}).encode()
    cut = gzip.compress(original)[:200]
    body, encoding = encode_body(cut, None, "gzip")
    decoded = unb64(body)
    assert encoding == "base64"
    prefix, _, marker = decoded.rpartition(b"\n[moesifasgi: body truncated after ")
    assert prefix and original.startswith(prefix)
    assert marker.startswith(str(len(prefix)).encode())


def test_a_gzip_stream_corrupt_midway_keeps_what_came_before_the_damage():
    rng = random.Random(5)
    original = " ".join(str(rng.random()) for _ in range(40_000)).encode()  # ~800 KB
    compressed = bytearray(gzip.compress(original))
    middle = len(compressed) // 2
    compressed[middle : middle + 64] = b"\xff" * 64
    body, encoding = encode_body(bytes(compressed), None, "gzip", limit=2 * MB)
    prefix = unb64(body).partition(b"\n[moesifasgi: body truncated after ")[0]
    assert encoding == "base64"
    assert len(prefix) > 100_000 and original.startswith(prefix)


def test_a_gzip_member_followed_by_garbage_keeps_the_member_and_is_marked_truncated():
    body, encoding = encode_body(gzip.compress(b"first") + b"trailing junk", None, "gzip")
    assert encoding == "base64"
    assert unb64(body) == b"first" + truncation_marker(5, None)


def test_a_gzip_bomb_is_cut_at_the_limit_and_marked_truncated():
    bomb = gzip.compress(b"\x00" * (50 * MB))
    body, encoding = encode_body(bomb, None, "gzip", total_size=len(bomb), limit=MB)
    decoded = unb64(body)
    assert encoding == "base64"
    assert decoded == b"\x00" * MB + truncation_marker(MB, len(bomb), compressed=True)


def test_a_truncated_json_body_is_never_presented_as_json():
    # Even a prefix that happens to parse must not look like the whole body.
    data = b"[1, 2, 3]"
    body, encoding = encode_body(data, "application/json", None, truncated=True, total_size=5000)
    assert encoding == "base64"
    assert unb64(body) == data + b"\n[moesifasgi: body truncated after 9 bytes; 5000 bytes were sent]"


def test_a_truncated_body_of_unknown_size_is_still_marked():
    body, _ = encode_body(b"abc", None, None, truncated=True)
    assert unb64(body) == b"abc\n[moesifasgi: body truncated after 3 bytes]"


def test_a_truncated_gzip_body_from_a_buffer_is_marked_with_the_bytes_sent():
    original = b"x" * 10_000
    compressed = gzip.compress(original)
    buffer = BodyBuffer(limit=len(compressed) - 10)  # loses the gzip trailer
    buffer.append(compressed)
    body, encoding = encode_body(
        buffer.getvalue(), None, "gzip", truncated=buffer.truncated, total_size=buffer.total_size
    )
    decoded = unb64(body)
    assert encoding == "base64"
    assert decoded.endswith(f"; {len(compressed)} bytes were sent gzip-compressed]".encode())
    assert original.startswith(decoded.partition(b"\n[moesifasgi")[0])


def test_encode_body_never_raises_on_odd_input():
    assert encode_body(bytearray(b'{"a": 1}'), None, None) == ({"a": 1}, "json")
    body, encoding = encode_body(b"\x1f\x8b\x08garbage", None, "gzip")
    assert encoding == "base64" and unb64(body) == b"\x1f\x8b\x08garbage"
    assert encode_body(b"{}", "application/json; charset=no-such-charset", None)[1] == "base64"


# -- BodyBuffer -------------------------------------------------------------


def test_a_body_under_the_limit_is_kept_whole():
    buffer = BodyBuffer(limit=100)
    for piece in (b"hello ", b"", b"world"):
        buffer.append(piece)
    assert (buffer.getvalue(), buffer.total_size, buffer.truncated) == (b"hello world", 11, False)
    assert len(buffer) == 11


def test_a_body_exactly_at_the_limit_is_not_truncated():
    buffer = BodyBuffer(limit=10)
    buffer.append(b"0123456789")
    assert (buffer.getvalue(), buffer.truncated) == (b"0123456789", False)


def test_a_body_over_the_limit_keeps_its_prefix_and_counts_everything():
    buffer = BodyBuffer(limit=10)
    for piece in (b"01234", b"56789abc", b"defgh"):
        buffer.append(piece)
    assert buffer.getvalue() == b"0123456789"
    assert buffer.truncated is True
    assert buffer.total_size == 18


def test_a_zero_limit_keeps_nothing_but_still_counts():
    buffer = BodyBuffer(limit=0)
    buffer.append(b"abc")
    assert (buffer.getvalue(), buffer.total_size, buffer.truncated) == (b"", 3, True)


def test_kept_bytes_are_copied_from_mutable_chunks():
    chunk = bytearray(b"abc")
    buffer = BodyBuffer(limit=10)
    buffer.append(chunk)
    chunk[:] = b"xyz"
    assert buffer.getvalue() == b"abc"


def test_getvalue_can_be_called_repeatedly():
    buffer = BodyBuffer(limit=10)
    buffer.append(b"ab")
    buffer.append(b"cd")
    assert buffer.getvalue() == buffer.getvalue() == b"abcd"


def test_buffer_memory_stays_bounded_when_20_mb_is_appended_in_64_kib_chunks():
    chunk = b"z" * CHUNK
    limit = 256 * 1024
    tracemalloc.start()
    try:
        buffer = BodyBuffer(limit=limit)
        for _ in range(20 * MB // CHUNK):
            buffer.append(chunk)
        value = buffer.getvalue()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(value), buffer.total_size, buffer.truncated) == (limit, 20 * MB, True)
    # The kept chunks plus one joined copy, and nothing proportional to 20 MB.
    assert peak < 2 * limit + CHUNK


def test_buffer_uses_slots():
    assert not hasattr(BodyBuffer(), "__dict__")
