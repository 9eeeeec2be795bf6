from __future__ import annotations

import json

import pytest

from moesifasgi import jsoncodec


@pytest.fixture(params=["orjson", "stdlib"])
def codec(request, monkeypatch):
    if request.param == "stdlib":
        monkeypatch.setattr(jsoncodec, "orjson", None)
    elif jsoncodec.orjson is None:
        pytest.skip("orjson not installed")
    return jsoncodec


def test_dumps_is_compact_json_that_round_trips(codec):
    value = {"a": [1, 2.5, None, True], "text": "caf\u00e9\u2603", "nested": {"k": "v"}}
    text = codec.dumps(value)
    assert " " not in text
    assert json.loads(text) == value


def test_dumps_copes_with_what_orjson_refuses(codec):
    value = {"lone": "\ud800", 7: "int key", "big": 2**70}
    text = codec.dumps(value)
    text.encode("utf-8")  # storable in SQLite
    parsed = json.loads(text)
    assert parsed["lone"] == "\ud800" and parsed["7"] == "int key" and parsed["big"] == 2**70


def test_dumps_gives_non_string_keys_as_strings_when_nothing_else_is_refused(codec):
    # orjson's fast path refuses such a key; the retry with OPT_NON_STR_KEYS must
    # give the same text the standard library would.
    value = {"metadata": {1: "one", None: "none", 2.5: "x"}, "ok": "y"}
    assert json.loads(codec.dumps(value)) == {"metadata": {"1": "one", "null": "none", "2.5": "x"}, "ok": "y"}


def test_dumps_turns_unknown_types_into_strings(codec):
    import datetime

    assert json.loads(codec.dumps({"when": datetime.date(2026, 11, 24)})) == {"when": "2026-11-24"}


@pytest.mark.parametrize("bad", [b"[NaN]", b"{\"a\": Infinity}", b"{\"a\":\"\\ud800\"}", b"{oops", b""])
def test_loads_rejects_what_is_not_strict_json(codec, bad):
    with pytest.raises(ValueError):
        codec.loads(bad)


def test_loads_parses_bytes_and_text(codec):
    assert codec.loads(b' {"a": [1]} ') == {"a": [1]}
    assert codec.loads('["\u00e9"]') == ["\u00e9"]
