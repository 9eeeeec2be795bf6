"""Masking text that is no document we can parse: cut-off or invalid JSON, log lines, raw multipart.

Used by field_masks for bodies stored as base64 and for strings inside JSON
bodies. Wherever a masked name is used as a key (`"name": value`, `name: value`,
`name=value`, a multipart part named so), the value is replaced by the marker;
a value whose end cannot be found is removed with everything after it.
Every scan here is linear in the text (str.find, unambiguous patterns).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import FrozenSet, Iterator, Match, Optional, Pattern, Tuple

__all__ = ["MASK_MARKER", "mask_multipart", "mask_text", "mask_xml"]

# Legal unencoded in JSON, form values, query strings and plain text alike.
MASK_MARKER = "***MASKED***"

# Where a bare value stops, after "name: " (JSON-ish, YAML, header lines) or "name=" (forms, cookies).
_BARE_END = {":": re.compile(r"[,}\]\r\n]"), "=": re.compile(r"[&;,\s}\]]")}
_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*')

_PART_HEADERS = re.compile(
    r'content-disposition:[^\r\n]*?;\s*name="?([^";\r\n]*)"?[^\r\n]*\r?\n(?:[^\r\n]+\r?\n)*\r?\n', re.IGNORECASE)


@lru_cache(maxsize=64)
def _xml_open_tag(fields: FrozenSet[str]) -> Pattern[str]:
    names = "|".join(re.escape(name) for name in sorted(fields, key=len, reverse=True))
    # <password>, <ns:Password attr="...">: the pattern starts with "<", which re scans for quickly.
    return re.compile(r"<(?:[\w.-]+:)?(?:%s)(?:\s[^<>]*)?>" % names, re.IGNORECASE)


def mask_xml(text: str, fields: FrozenSet[str]) -> str:
    """The content of an XML element named as a masked field, up to the next closing tag."""
    if "<" not in text:
        return text
    out = []
    position = 0
    for match in _xml_open_tag(fields).finditer(text):
        if match.start() < position or text[match.end() - 2] == "/":
            continue  # inside what was masked, or <password/>
        end = text.find("</", match.end())
        out.append(text[position:match.end()])
        out.append(MASK_MARKER)
        if end < 0:
            return "".join(out)  # never closed (cut off): nothing after it is kept
        position = end
    if not out:
        return text
    out.append(text[position:])
    return "".join(out)


def mask_multipart(text: str, fields: FrozenSet[str]) -> str:
    """The value of a masked field in raw multipart/form-data (a part's content, up to the next boundary)."""
    out = []
    position = 0
    for match in _PART_HEADERS.finditer(text):
        if match.start() < position or match.group(1).strip().lower() not in fields:
            continue
        end = text.find("\r\n--", match.end())
        out.append(text[position:match.end()])
        out.append(MASK_MARKER)
        if end < 0:
            return "".join(out)  # the part was cut off: nothing after it is kept
        position = end
    out.append(text[position:])
    return "".join(out)


def mask_text(text: str, pattern: Pattern[str], fields: FrozenSet[str]) -> str:
    """Replace the value after every `name:` / `name=` / `"name":` in `text`.

    Cut-off JSON, JSON with a trailing comma, a log line, a YAML or header
    block: wherever a masked name is used as a key. A value whose end cannot be
    found is removed with everything after it.
    """
    spans = []
    for match in _key_matches(text, pattern, fields):
        spans.append((match.end(), match.group(1)))
    if "\\u" in text:
        # A key spelled with \\u escapes in a document json could not parse.
        for match in _JSON_KEY.finditer(text):
            if "\\u" not in match.group(1):
                continue
            try:
                key = json.loads('"%s"' % match.group(1))
            except ValueError:
                continue
            if isinstance(key, str) and key.lower() in fields:
                spans.append((match.end(), ":"))
    if not spans:
        return text
    spans.sort()
    out = []
    position = 0
    for start, separator in spans:
        if start < position:
            continue  # inside a value already masked
        out.append(text[position:start])
        end, replacement = _value_extent(text, start, separator)
        if end is None:
            out.append(MASK_MARKER)  # cannot tell where it ends: drop the rest
            return "".join(out)
        out.append(replacement)
        position = end
    out.append(text[position:])
    return "".join(out)


def _key_matches(text: str, pattern: Pattern[str], fields: FrozenSet[str]) -> Iterator[Match[str]]:
    """`pattern`'s matches, tried only where a name occurs (str.find is far faster than
    a case-insensitive regex scan of the whole text)."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a character whose lower case is longer: positions would shift
        yield from pattern.finditer(text)
        return
    tried = set()
    for name in fields:
        index = lowered.find(name)
        while index >= 0:
            if index not in tried:
                tried.add(index)
                match = pattern.match(text, index)
                if match is not None:
                    yield match
            index = lowered.find(name, index + 1)


def _value_extent(text: str, start: int, separator: str) -> Tuple[Optional[int], str]:
    """(end of the value starting at `start`, what replaces it); end None when unknown."""
    size = len(text)
    if start >= size:
        return size, ""
    first = text[start]
    if first in "\"'\\":
        quote_at = start
        while quote_at < size and text[quote_at] == "\\":
            quote_at += 1
        if quote_at < size and text[quote_at] in "\"'":
            end = _closing_quote(text, quote_at, quote_at - start)
            opener = text[start:quote_at + 1]
            return end, opener + MASK_MARKER + opener
    if first in "{[":
        return _closing_bracket(text, start), '"%s"' % MASK_MARKER
    stop = _BARE_END[separator].search(text, start)
    return (stop.start() if stop else size), MASK_MARKER


def _backslashes_before(text: str, index: int, floor: int) -> int:
    count = 0
    while index - 1 - count > floor and text[index - 1 - count] == "\\":
        count += 1
    return count


def _closing_quote(text: str, quote_at: int, level: int) -> Optional[int]:
    """End (exclusive) of a string opened at `quote_at` with `level` backslashes before its quote."""
    quote = text[quote_at]
    index = quote_at + 1
    while True:
        index = text.find(quote, index)
        if index < 0:
            return None
        count = _backslashes_before(text, index, quote_at)
        if level == 0 and count % 2 == 0 or level and count == level:
            return index + 1
        if level and count < level:
            return None  # the enclosing string ended first: malformed
        index += 1


def _closing_bracket(text: str, start: int) -> Optional[int]:
    depth = 0
    index = start
    size = len(text)
    while index < size:
        char = text[index]
        if char == '"':
            end = _closing_quote(text, index, 0)
            if end is None:
                return None
            index = end
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None
