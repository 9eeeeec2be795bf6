"""Capture request and response bodies and encode them for a Moesif event.

Moesif takes a body either as parsed JSON (``transfer_encoding: "json"``) or as
base64 text (``"base64"``); a gzip body is decompressed first.

Truncation. Moesif's collector caps an event at 1 MB and, for a bigger one,
keeps only the first ~450 KB of the body, base64-encoded, so that a partial
body is never shown as valid JSON (Moesif API docs, "Limits and Restrictions /
Maximum Event Size", github.com/Moesif/apidocs ``source/includes/_errors.md``).
We follow the same convention client-side, before the event is queued: a body
cut at :data:`MAX_BODY_BYTES` is sent as base64 of the kept prefix, never as
JSON, even when the prefix happens to parse. Because base64 alone does not
say "incomplete", the encoded bytes end with a readable marker line (see
:func:`truncation_marker`), e.g.
``\\n[moesifasgi: body truncated after 262144 bytes; 1048576 bytes were sent]``.
(Moesif's SDKs that drop an oversize body entirely send
``{"msg": "request.body.length ... exceeded requestMaxBodySize ..."}`` instead,
e.g. moesif-servlet's ``BodyHandler.getLargeBodyError``; we keep the prefix,
as the collector does.) The same applies when a gzip stream ends early or
decompresses to more than the cap.

Multipart uploads are summarised as they stream, by :mod:`.multipart`.
"""

from __future__ import annotations

import binascii
import logging
import re
import zlib
from typing import Any, List, Optional, Tuple

from . import jsoncodec

__all__ = [
    "MAX_BODY_BYTES",
    "BodyBuffer",
    "encode_body",
    "truncation_marker",
]

logger = logging.getLogger(__name__)

# Moesif accepts at most 1 MB per event. Two bodies of 256 KiB become
# 2 x 342 KiB once base64-encoded (+33%, and base64 needs no JSON escaping),
# i.e. ~684 KiB, leaving ~340 KiB for headers, URI and metadata. A gzip body
# is capped at the same size after decompression. A JSON body is sent parsed;
# re-serialised compactly (separators=(",", ":"), ensure_ascii=False) it is
# about as long as its source, so the budget holds for real APIs. (With
# ensure_ascii=True non-ASCII text grows up to 3x, and number-heavy arrays like
# [1E9,1E9] grow when floats are re-printed, so whoever serialises the event
# should still check its final size.)
MAX_BODY_BYTES = 256 * 1024

_GZIP_STEP = 16 * 1024

_JSON_START = frozenset(b"{[")
# Fewer brackets than this cannot nest deep enough to defeat the encoder.
_DEEP_ENOUGH_TO_CHECK = 250
_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")  # JSON's whitespace, scanned in C
_JSON_SPACE = frozenset(b" \t\r\n")




def truncation_marker(kept: int, total: Optional[int], *, compressed: bool = False) -> bytes:
    """The line appended to a truncated body before it is base64-encoded.

    ``kept`` counts the bytes shown (after decompression); ``total`` the
    bytes the peer sent (before it), when known.
    """
    marker = f"\n[moesifasgi: body truncated after {kept} bytes"
    if total is not None:
        marker += f"; {total} bytes were sent"
        if compressed:
            marker += " gzip-compressed"
    return (marker + "]").encode("ascii")


class BodyBuffer:
    """Keep the first ``limit`` bytes of a streamed body; count all of them.

    Memory stays bounded by ``limit`` however much is appended, and chunks
    are joined once, in :meth:`getvalue`, so appending costs no copying.
    """

    __slots__ = ("limit", "total_size", "truncated", "_chunks", "_kept")

    def __init__(self, limit: int = MAX_BODY_BYTES) -> None:
        self.limit = max(0, int(limit))
        self.total_size = 0
        self.truncated = False
        self._chunks: List[bytes] = []
        self._kept = 0

    def append(self, chunk: bytes) -> None:
        size = len(chunk)
        if not size:
            return
        self.total_size += size
        room = self.limit - self._kept
        if room <= 0:
            self.truncated = True
            return
        if size > room:
            chunk = chunk[:room]
            size = room
            self.truncated = True
        # bytes() copies a bytearray/memoryview the app may reuse later.
        self._chunks.append(chunk if type(chunk) is bytes else bytes(chunk))
        self._kept += size

    def __len__(self) -> int:
        return self._kept

    def getvalue(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""


# Real clients send one member; thousands are only ever an attack on our CPU
# (each costs a few microseconds). Beyond this the body counts as cut short.
MAX_GZIP_MEMBERS = 1000
_ZEROS = re.compile(rb"\x00*")


def _gunzip(data: bytes, limit: int) -> Optional[Tuple[bytes, bool]]:
    """Decompress gzip ``data``, at most ``limit`` bytes of output.

    Returns ``(output, complete)``, or None when nothing decompresses (not
    gzip at all). ``complete`` is False when the stream ended early, was
    corrupt midway, or held more than ``limit`` bytes. Bounded output also
    defuses decompression bombs.

    Linear in the input: it is never copied, only sliced by position (the
    rest of the buffer used to be copied after every member, quadratic in
    the number of tiny members). zlib still copies what it was fed past a member's
    end (``unused_data``, under 16 KB), which MAX_GZIP_MEMBERS bounds.
    """
    limit = max(1, limit)  # max_length=0 would mean "unlimited" to zlib
    out: List[bytes] = []
    produced = 0
    members = 0
    view = memoryview(data)
    size = len(data)
    pos = 0
    inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    while True:
        if inflater.eof:
            members += 1
            # What was fed past the member's end goes back to the input;
            # concatenated members are legal, zero padding after them too.
            pos -= len(inflater.unused_data)
            pos = _ZEROS.match(data, pos).end()  # type: ignore[union-attr]
            if pos >= size:
                return b"".join(out), True
            if members >= MAX_GZIP_MEMBERS:
                return b"".join(out), False
            inflater = zlib.decompressobj(wbits=31)
        if pos >= size:
            return b"".join(out), False  # the stream stopped mid-member
        # Feed the input in slices so that a stream corrupt midway still
        # yields what came before the damage.
        piece_in = view[pos : pos + _GZIP_STEP]
        pos += len(piece_in)
        try:
            # One byte past the limit tells "exactly full" from "too big".
            piece = inflater.decompress(piece_in, limit - produced + 1)
        except zlib.error:
            return (b"".join(out), False) if produced or members else None
        out.append(piece)
        produced += len(piece)
        if produced > limit:
            return b"".join(out)[:limit], False


def declared_charset(content_type: Optional[str]) -> Optional[str]:
    """The ``charset`` parameter of a Content-Type, lower-cased, or None."""
    if not content_type or "charset" not in content_type.lower():
        return None
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() or None
    return None


# Charsets whose bytes orjson parses as they are (it takes UTF-8, of which ASCII is a part).
_JSON_AS_BYTES = frozenset(("utf-8", "utf8", "us-ascii", "ascii"))


def _as_json(data: bytes, content_type: Optional[str]) -> Tuple[bool, Any]:
    """Parse ``data`` as JSON when it looks like JSON; ``(False, None)`` if not."""
    first = data[0]
    if first not in _JSON_START:
        # The common cases, tested without the regex: JSON that starts at once,
        # and text that cannot be JSON. Leading whitespace takes the scan.
        if first not in _JSON_SPACE:
            return False, None  # the common non-JSON case costs no exception
        index = _LEADING_SPACE.match(data).end()  # type: ignore[union-attr]
        if index == len(data) or data[index] not in _JSON_START:
            return False, None
    try:
        charset = declared_charset(content_type)
        parsed = jsoncodec.loads(data if charset is None or charset in _JSON_AS_BYTES else data.decode(charset))
        if data.count(b"[") + data.count(b"{") > _DEEP_ENOUGH_TO_CHECK:
            # Nested deeper than the event encoder can write (orjson stops at
            # 255 levels, the standard library at the recursion limit): any
            # client could then hide its own calls. Rare enough to test by
            # encoding; such a body is kept as base64 of its bytes.
            jsoncodec.dumps(parsed)
    except (ValueError, LookupError, RecursionError, TypeError):
        return False, None  # UnicodeError and JSONDecodeError are ValueErrors
    return True, parsed


def _b64(data: bytes) -> str:
    # binascii directly: base64.b64encode is a Python wrapper around this call.
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def encode_body(
    data: bytes,
    content_type: Optional[str],
    content_encoding: Optional[str],
    *,
    truncated: bool = False,
    total_size: Optional[int] = None,
    limit: int = MAX_BODY_BYTES,
) -> Tuple[Any, Optional[str]]:
    """Return ``(body, transfer_encoding)`` for one captured body.

    ``data`` is what was kept (at most ``limit`` bytes); ``truncated`` and
    ``total_size`` come from the :class:`BodyBuffer` that captured it.
    ``content_type`` only matters for a declared non-UTF-8 charset. Empty
    gives ``(None, None)``; JSON gives ``(parsed, "json")``; anything else,
    and anything truncated, ``(base64 text, "base64")``. Never raises.
    """
    if not data:
        return None, None
    try:
        if content_encoding and "gzip" in content_encoding.lower():
            inflated = _gunzip(data, limit)
            if inflated is None:
                # Labelled gzip but not gzip: show the bytes as they came.
                if truncated:
                    return _b64(data + truncation_marker(len(data), total_size)), "base64"
                return _b64(data), "base64"
            plain, complete = inflated
            if not complete or truncated:
                marker = truncation_marker(len(plain), total_size, compressed=True)
                return _b64(plain + marker), "base64"
            data = plain
            if not data:
                return None, None
        elif truncated:
            return _b64(data + truncation_marker(len(data), total_size)), "base64"
        is_json, parsed = _as_json(data, content_type)
        if is_json:
            return parsed, "json"
        return _b64(data), "base64"
    except Exception:  # never let an odd body break event building
        logger.debug("could not encode a body; sending it as base64", exc_info=True)
        try:
            return _b64(bytes(data)), "base64"
        except Exception:
            return None, None
