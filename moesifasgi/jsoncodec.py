"""JSON on the request path: orjson when installed, the standard library otherwise.

Parsing each JSON body and encoding each event are the two largest costs the
middleware adds to a request; orjson does both four to ten times faster than
the standard library, which is what keeps the app near its bare throughput.
The standard library remains the fallback for what orjson refuses (strings
with lone surrogates, integers beyond 64 bits, non-string keys) and for
installations without orjson.
"""
from __future__ import annotations

import json
from typing import Any, Union

try:
    import orjson
except ImportError:  # pragma: no cover - exercised by the fallback tests
    orjson = None  # type: ignore[assignment]


def _reject_constant(name: str) -> Any:
    # NaN and Infinity parse in Python but are not JSON: Moesif would reject the
    # whole batch, so such a body must not be treated as JSON.
    raise ValueError(f"{name} is not valid JSON")


_STDLIB_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# ASCII output: a lone surrogate becomes an escape instead of failing later
# inside SQLite's UTF-8 conversion.
# allow_nan=False: NaN is not JSON and Moesif would refuse the batch; the caller
# decides what to store instead (see pipeline.EventPipeline.encode).
_stdlib_encode = json.JSONEncoder(separators=(",", ":"), default=str, allow_nan=False).encode


def stdlib_loads(data: Union[bytes, str]) -> Any:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    parsed = _STDLIB_DECODER.decode(text)
    if "\\ud" in text or "\\uD" in text:
        # A lone surrogate escape parses but cannot be stored as UTF-8.
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    return parsed


def loads(data: Union[bytes, str]) -> Any:
    """Parse strict JSON; ValueError for anything else (NaN, lone surrogates...)."""
    if orjson is not None:
        return orjson.loads(data)  # its JSONDecodeError is a ValueError
    return stdlib_loads(data)


def dumps(value: Any) -> str:
    """Compact JSON text; unknown types become their str()."""
    if orjson is not None:
        try:
            # Without OPT_NON_STR_KEYS first: that option made every event's
            # encoding markedly slower, and only a dict with a non-string key
            # (a user's metadata) needs it.
            return orjson.dumps(value, default=str).decode("utf-8")
        except TypeError:
            pass
        try:
            return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")
        except TypeError:
            pass  # lone surrogates, huge integers: the standard library copes
    return _stdlib_encode(value)
