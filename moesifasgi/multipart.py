"""Summarise a streamed ``multipart/form-data`` body instead of keeping it.

Uploads are not kept byte for byte: :class:`MultipartSummary` reduces them to
``{field: text value | uploaded file name}`` as they stream, in bounded memory.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote

__all__ = [
    "MAX_FIELD_VALUE_BYTES",
    "MAX_MULTIPART_FIELDS",
    "MultipartSummary",
    "is_multipart",
]

logger = logging.getLogger(__name__)

# Enough text to recognise a form value, not a document.
MAX_FIELD_VALUE_BYTES = 1024
MAX_MULTIPART_FIELDS = 100
# A part's header block is a few hundred bytes; anything longer is garbage.
_MAX_PART_HEADER_BYTES = 8 * 1024
_MAX_BOUNDARY_CHARS = 200  # RFC 2046 allows 70; be lenient, but bounded


def is_multipart(content_type: Optional[str]) -> bool:
    """True for a ``multipart/form-data`` content type."""
    if not content_type:
        return False
    return content_type.lstrip()[:19].lower() == "multipart/form-data"


# Content-Disposition parameters: name="value" (with \" escapes) or name=token.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_BOUNDARY = re.compile(r';\s*boundary\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]+)', re.IGNORECASE)

_BYTES_LIKE = (bytes, bytearray, memoryview)

# Parser states.
_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _CONTENT, _SKIP, _DONE = range(6)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def _disposition(header_block: bytes) -> Tuple[Optional[str], Optional[str]]:
    """Return ``(field name, file name or None)`` from a part's headers."""
    for line in header_block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or name.strip().lower() != b"content-disposition":
            continue
        # Browsers send raw UTF-8 in quoted names; replace what is not.
        text = ";" + value.decode("utf-8", "replace").partition(";")[2]
        params: Dict[str, str] = {}
        for key, raw in _PARAM.findall(text):
            params.setdefault(key.lower(), _unquote(raw))
        filename = params.get("filename")
        extended = params.get("filename*")  # RFC 5987: utf-8''na%C3%AFve.txt
        if extended is not None:
            charset, _, encoded = extended.partition("''")
            try:
                filename = unquote(encoded, encoding=charset or "utf-8", errors="replace")
            except LookupError:
                filename = unquote(encoded, errors="replace")
        return params.get("name"), filename
    return None, None


class MultipartSummary:
    """Reduce a streamed ``multipart/form-data`` body to a small summary.

    Feed it the request body chunk by chunk, split anywhere. :meth:`result`
    maps each field name to its text value (first
    :data:`MAX_FIELD_VALUE_BYTES` bytes, decoded as UTF-8) or, for a file
    field, to the uploaded file's name; file contents are never kept. A name
    seen more than once maps to a list of its values in order. At most
    :data:`MAX_MULTIPART_FIELDS` parts are kept. A part still streaming when
    :meth:`result` is called is included with what was received so far.

    Memory is bounded (a carry-over of at most one header block, plus the
    summary) whatever the upload size. Garbage never raises; it only yields
    fewer fields.
    """

    __slots__ = (
        "_delimiter", "_first", "_carry", "_state", "_fields",
        "_name", "_filename", "_value", "_value_size",
    )

    def __init__(self, boundary: bytes) -> None:
        self._first = b"--" + boundary  # the first delimiter may open the body
        self._delimiter = b"\r\n--" + boundary
        self._carry = b""
        self._state = _PREAMBLE
        self._fields: List[Tuple[str, str]] = []
        self._name: Optional[str] = None
        self._filename: Optional[str] = None
        self._value: List[bytes] = []
        self._value_size = 0

    @classmethod
    def from_content_type(cls, content_type: Optional[str]) -> Optional[MultipartSummary]:
        """Build from a Content-Type header; None unless it is multipart with a boundary."""
        if not is_multipart(content_type):
            return None
        match = _BOUNDARY.search(content_type or "")
        if match is None:
            return None
        boundary = _unquote(match.group(1))
        if not boundary or len(boundary) > _MAX_BOUNDARY_CHARS:
            return None
        try:
            return cls(boundary.encode("ascii"))
        except UnicodeEncodeError:
            return None

    def feed(self, chunk: bytes) -> None:
        """Consume the next piece of the body. Never raises."""
        if self._state == _DONE or not chunk or not isinstance(chunk, _BYTES_LIKE):
            return
        try:
            if type(chunk) is not bytes:
                chunk = bytes(chunk)
            self._consume(self._carry + chunk if self._carry else chunk)
        except Exception:
            logger.debug("unparseable multipart body; summary stops here", exc_info=True)
            self._finish_part()
            self._state = _DONE
            self._carry = b""

    def result(self) -> Dict[str, Any]:
        """Return ``{field name: value, file name, or list of them}``. Never raises."""
        try:
            pairs = list(self._fields)
            if (
                self._state == _CONTENT
                and self._name is not None
                and len(pairs) < MAX_MULTIPART_FIELDS
            ):
                pairs.append(self._pending())
            summary: Dict[str, Any] = {}
            for name, value in pairs:
                if name not in summary:
                    summary[name] = value
                elif isinstance(summary[name], list):
                    summary[name].append(value)
                else:
                    summary[name] = [summary[name], value]
            return summary
        except Exception:
            logger.debug("could not summarise a multipart body", exc_info=True)
            return {}

    # -- internals ---------------------------------------------------------

    def _pending(self) -> Tuple[str, str]:
        if self._filename is not None:
            return self._name or "", self._filename
        return self._name or "", b"".join(self._value).decode("utf-8", "replace")

    def _finish_part(self) -> None:
        if self._state == _CONTENT and self._name is not None:
            if len(self._fields) < MAX_MULTIPART_FIELDS:
                self._fields.append(self._pending())
        self._name = self._filename = None
        self._value = []
        self._value_size = 0

    def _keep(self, data: bytes, start: int, end: int) -> None:
        # Text fields only, and only up to the cap: file bytes are dropped.
        if self._filename is not None or self._name is None or end <= start:
            return
        room = MAX_FIELD_VALUE_BYTES - self._value_size
        if room > 0:
            piece = data[start : min(end, start + room)]
            self._value.append(piece)
            self._value_size += len(piece)

    def _consume(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        delimiter = self._delimiter
        while pos < size:
            state = self._state
            if state == _PREAMBLE:
                found = data.find(self._first, pos)
                if found < 0:
                    pos = max(pos, size - len(self._first) + 1)
                    break
                pos = found + len(self._first)
                self._state = _AFTER_DELIMITER
            elif state == _AFTER_DELIMITER:
                # "--" closes the body; otherwise optional padding, then CRLF.
                if size - pos < 2:
                    break
                if data[pos : pos + 2] == b"--":
                    self._state = _DONE
                    pos = size
                    break
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if size - pos > 256:  # no line end in sight: garbage
                        self._state = _SKIP
                        continue
                    break
                if data[pos:eol].strip(b" \t"):
                    self._state = _SKIP  # text after a delimiter: not ours
                    continue
                # Keep the CRLF: the header block ends at the first CRLFCRLF
                # from here, which also covers a part without headers.
                pos = eol
                self._state = _HEADERS
            elif state == _HEADERS:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if size - pos > _MAX_PART_HEADER_BYTES:
                        self._state = _SKIP
                        continue
                    break
                name, filename = _disposition(data[pos + 2 : end])
                pos = end + 4
                self._name, self._filename = name, filename
                self._state = _CONTENT if name is not None else _SKIP
            else:  # _CONTENT or _SKIP: look for the next delimiter
                found = data.find(delimiter, pos)
                if found < 0:
                    # Keep only what could be the start of a split delimiter.
                    safe = max(pos, size - len(delimiter) + 1)
                    if state == _CONTENT:
                        self._keep(data, pos, safe)
                    pos = safe
                    break
                if state == _CONTENT:
                    self._keep(data, pos, found)
                self._finish_part()
                pos = found + len(delimiter)
                self._state = _AFTER_DELIMITER
        self._carry = data[pos:] if pos < size and self._state != _DONE else b""
