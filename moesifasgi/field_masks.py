"""Declarative masks: named headers and fields replaced by a fixed marker before an event is written.

REQUEST_HEADER_MASKS / RESPONSE_HEADER_MASKS name headers (case-insensitive);
REQUEST_BODY_MASKS / RESPONSE_BODY_MASKS name fields (case-insensitive), found
at any depth of a JSON body, in form-urlencoded bodies and, for the request, in
the query string. The names of the original package (whose outgoing capture
honoured the two body settings), applied here to incoming and outgoing calls.

They hold for every form a body is stored in, not only parsed JSON:

- parsed JSON (``transfer_encoding: "json"``, multipart summaries too): walked;
  a string value that itself holds a masked name (a JSON or form text inside a
  field, an error message with a URL) is scanned as text;
- base64 (anything that was not valid JSON, or was cut at MAX_BODY_BYTES): the
  bytes are decoded and, by what they are, parsed as JSON (the NaN case), split
  as a form, or scanned as text (text_masks): a masked name followed by ``:``
  or ``=``, a multipart part or an XML element so named has its value replaced;
  a value whose end cannot be found (cut off, unbalanced, garbled) is removed
  with everything after it. The truncation marker line stays.

For outgoing calls, credentials are masked by default on top of these
(REDACT_OUTGOING_CREDENTIALS, see OUTGOING_CREDENTIAL_HEADERS/FIELDS).
With no mask at all, the pipeline skips this module (one attribute test).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Dict, FrozenSet, Iterable, Optional, Pattern, Tuple
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from . import jsoncodec
from .bodies import declared_charset
from .text_masks import MASK_MARKER, mask_multipart, mask_text, mask_xml

__all__ = [
    "MASK_MARKER",
    "OUTGOING_CREDENTIAL_FIELDS",
    "OUTGOING_CREDENTIAL_HEADERS",
    "Masker",
    "loggable_url",
    "maskers_for",
]

OUTGOING_CREDENTIAL_HEADERS = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-auth-token", "x-amz-security-token",
)
# Query parameters and body fields that carry a credential in common third-party APIs
# (OAuth token requests and answers, API keys in the URL, pre-signed URLs).
OUTGOING_CREDENTIAL_FIELDS = (
    "api_key", "apikey", "api-key", "key", "token", "access_token", "refresh_token", "id_token",
    "client_secret", "password", "secret", "sig", "signature", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "x-goog-signature", "x-goog-credential",
)

_TRUNCATION_TAIL = re.compile(
    rb"\n\[moesifasgi: body truncated after \d+ bytes(?:; \d+ bytes were sent(?: gzip-compressed)?)?\]\Z")
# Unambiguous on purpose (a name without "=", then an optional "=value"): linear on any input.
_FORM = re.compile(r"\A[^\s=&]+=[^\s&]*(?:&[^\s=&]*(?:=[^\s&]*)?)*\Z")


def _names(values: Iterable[str]) -> FrozenSet[str]:
    return frozenset(v.strip().lower() for v in values if v and v.strip())


class Masker:
    """The masks for one direction (incoming or outgoing), compiled once."""

    __slots__ = ("request_headers", "response_headers", "request_fields", "response_fields", "userinfo",
                 "_request_pattern", "_response_pattern", "_request_names", "_response_names")

    def __init__(self, *, request_headers: Iterable[str] = (), response_headers: Iterable[str] = (),
                 request_fields: Iterable[str] = (), response_fields: Iterable[str] = (),
                 userinfo: bool = False) -> None:
        self.request_headers = _names(request_headers)
        self.response_headers = _names(response_headers)
        self.request_fields = _names(request_fields)
        self.response_fields = _names(response_fields)
        self.userinfo = userinfo  # a password in the URL (https://user:pass@host/)
        self._request_pattern = _key_pattern(self.request_fields)
        self._response_pattern = _key_pattern(self.response_fields)
        self._request_names = _name_list(self.request_fields)
        self._response_names = _name_list(self.response_fields)

    @property
    def empty(self) -> bool:
        return not (self.request_headers or self.response_headers or self.request_fields
                    or self.response_fields or self.userinfo)

    def apply(self, event: Dict[str, Any]) -> Dict[str, Any]:
        """Mask `event` in place (and return it)."""
        request = event.get("request")
        if isinstance(request, dict):
            _mask_headers(request, self.request_headers)
            uri = request.get("uri")
            if isinstance(uri, str) and (self.request_fields and ("?" in uri or "#" in uri)
                                         or self.userinfo and "@" in uri):
                request["uri"] = mask_url(uri, self.request_fields, userinfo=self.userinfo)
            if self.request_fields:
                _mask_section_body(request, self.request_fields, self._request_pattern, self._request_names)
        response = event.get("response")
        if isinstance(response, dict):
            _mask_headers(response, self.response_headers)
            if self.response_fields:
                _mask_section_body(response, self.response_fields, self._response_pattern, self._response_names)
        return event


def maskers_for(settings: Any) -> Tuple[Optional[Masker], Optional[Masker]]:
    """(incoming, outgoing) maskers for `settings`; None where there is nothing to mask."""
    incoming = Masker(
        request_headers=settings.request_header_masks, response_headers=settings.response_header_masks,
        request_fields=settings.request_body_masks, response_fields=settings.response_body_masks,
    )
    credentials = settings.redact_outgoing_credentials
    outgoing = Masker(
        request_headers=settings.request_header_masks + (OUTGOING_CREDENTIAL_HEADERS if credentials else ()),
        response_headers=settings.response_header_masks + (OUTGOING_CREDENTIAL_HEADERS if credentials else ()),
        request_fields=settings.request_body_masks + (OUTGOING_CREDENTIAL_FIELDS if credentials else ()),
        response_fields=settings.response_body_masks + (OUTGOING_CREDENTIAL_FIELDS if credentials else ()),
        userinfo=credentials,
    )
    return (None if incoming.empty else incoming), (None if outgoing.empty else outgoing)


# -- headers and URLs -------------------------------------------------------------------

def _mask_headers(section: Dict[str, Any], names: FrozenSet[str]) -> None:
    headers = section.get("headers")
    if not names or not isinstance(headers, dict):
        return
    for name in list(headers):
        if isinstance(name, str) and name.lower() in names:
            headers[name] = MASK_MARKER


def mask_form(text: str, fields: FrozenSet[str]) -> str:
    """`a=1&password=x` -> `a=1&password=***MASKED***`; names compared decoded."""
    if "%" not in text:
        lowered = text.lower()
        if not any(name in lowered for name in fields):
            return text
    pieces = text.split("&")
    changed = False
    for index, piece in enumerate(pieces):
        name, sep, _ = piece.partition("=")
        if unquote_plus(name).strip().lower() in fields:
            pieces[index] = name + "=" + MASK_MARKER
            changed = True
    return "&".join(pieces) if changed else text


def loggable_url(url: str) -> str:
    """Scheme, host and path of `url`: what a log line may show (no user info, query or fragment)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path


def mask_url(url: str, fields: FrozenSet[str], *, userinfo: bool = False) -> str:
    marks = [at for at in (url.find("?"), url.find("#")) if at >= 0]
    rest = url[min(marks) + 1:] if marks and fields else ""
    if not (userinfo and "@" in url) and mask_form(rest, fields) == rest:
        return url  # the usual case, decided without taking the URL apart
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK_MARKER  # not a URL we can take apart: nothing of it is kept
    query = mask_form(parts.query, fields) if parts.query and fields else parts.query
    # A fragment is not sent, but a recorded URL may carry one (#access_token=... of OAuth's implicit flow).
    fragment = mask_form(parts.fragment, fields) if parts.fragment and fields else parts.fragment
    netloc = parts.netloc
    if userinfo and "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, colon, _ = credentials.partition(":")
        netloc = f"{user}:{MASK_MARKER}@{host}" if colon else netloc
    if query == parts.query and netloc == parts.netloc and fragment == parts.fragment:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


# -- bodies ---------------------------------------------------------------------------------

def _key_pattern(fields: FrozenSet[str]) -> Optional[Pattern[str]]:
    if not fields:
        return None
    names = "|".join(re.escape(name) for name in sorted(fields, key=len, reverse=True))
    # The name as a key: not part of a longer name, then an optional closing quote
    # (escaped, inside a JSON string), then ":" or "=".
    return re.compile(r"(?<![\w-])(?:%s)(?![\w-])(?:\\*[\"'])?\s*([:=])\s*" % names, re.IGNORECASE)


def _name_list(fields: FrozenSet[str]) -> Tuple[str, ...]:
    """The names a text must contain one of to hold any of `fields`: "token" covers
    "access_token", so the quick test of a body runs fewer searches."""
    return tuple(sorted(n for n in fields if not any(o != n and o in n for o in fields)))


def _mask_section_body(section: Dict[str, Any], fields: FrozenSet[str], pattern: Pattern[str],
                       names: Tuple[str, ...]) -> None:
    if "body" not in section or section["body"] is None:
        return
    body = section["body"]
    if section.get("transfer_encoding") == "base64" and isinstance(body, str):
        headers = section.get("headers")
        content_type = headers.get("content-type") if isinstance(headers, dict) else None
        section["body"] = _mask_base64(body, fields, pattern, names, content_type)
    elif isinstance(body, (dict, list)):
        # One C-speed encode and substring tests spare the walk of a body that holds
        # no masked name at all (keys and string values all appear in its text).
        try:
            text = jsoncodec.dumps(body)
        except Exception:
            text = None
        if text is None or _may_hold(text, names):
            section["body"] = _mask_value(body, fields, pattern, names)
    else:
        section["body"] = _mask_value(body, fields, pattern, names)


def _mask_value(value: Any, fields: FrozenSet[str], pattern: Pattern[str], names: Tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        for key in list(value):
            if isinstance(key, str) and key.lower() in fields:
                value[key] = MASK_MARKER
            else:
                value[key] = _mask_value(value[key], fields, pattern, names)
        return value
    if isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _mask_value(item, fields, pattern, names)
        return value
    if isinstance(value, str) and _may_hold(value, names):
        # JSON, a form or a log line inside a field: masked as a body of its own.
        return _mask_text_body(value, fields, pattern, names, None, truncated=False)
    return value


def _decode(data: bytes, content_type: Optional[str]) -> Tuple[str, str]:
    """The body as text and the codec that gives the same bytes back."""
    for codec in (declared_charset(content_type), "utf-8"):
        if codec:
            try:
                return data.decode(codec), codec
            except (UnicodeDecodeError, LookupError):
                pass
    return data.decode("latin-1"), "latin-1"  # every byte maps to one character and back


def _mask_base64(body: str, fields: FrozenSet[str], pattern: Pattern[str], names: Tuple[str, ...],
                 content_type: Optional[str]) -> str:
    if len(body) % 4:
        # Not the base64 we wrote (a MASK_EVENT_MODEL runs after us, not before): keep nothing.
        return base64.b64encode(MASK_MARKER.encode()).decode("ascii")
    try:
        data = binascii.a2b_base64(body)
    except (binascii.Error, ValueError):
        return base64.b64encode(MASK_MARKER.encode()).decode("ascii")
    tail = b""
    if data.endswith(b"]"):
        match = _TRUNCATION_TAIL.search(data, max(0, len(data) - 200))
        if match is not None:
            data, tail = data[: match.start()], data[match.start():]
    form = "x-www-form-urlencoded" in (content_type or "").lower()
    charset = declared_charset(content_type)
    if charset in (None, "utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1"):
        # The usual case, decided on the bytes without decoding them: no masked name in them.
        if not _may_hold_bytes(data, names, form):
            return body
    text, codec = _decode(data, content_type)
    if not _may_hold(text, names, form):
        return body
    masked = _mask_text_body(text, fields, pattern, names, content_type, truncated=bool(tail))
    if masked == text:
        return body
    try:
        encoded = masked.encode(codec)
    except UnicodeEncodeError:
        encoded = masked.encode("utf-8")
    return base64.b64encode(encoded + tail).decode("ascii")


# A value to mask always follows a name and ":" or "=" (a multipart part's headers have both),
# or is an XML element's content.
def _may_hold(text: str, names: Tuple[str, ...], form: bool = False) -> bool:
    """False when `text` cannot hold a masked value, spelled plainly, escaped or percent-encoded."""
    if ":" not in text and "=" not in text and "<" not in text:
        return False
    lowered = text.lower()
    for name in names:
        if name in lowered:
            return True
    if "\\u" in text:
        return True
    return "%" in text and (form or len(text) <= 65536 and _FORM.match(text.strip()) is not None)


def _may_hold_bytes(data: bytes, names: Tuple[str, ...], form: bool) -> bool:
    if b":" not in data and b"=" not in data and b"<" not in data:
        return False
    lowered = data.lower()  # ASCII letters only: a name with others is looked for in the decoded text
    for name in names:
        if not name.isascii() or name.encode("ascii") in lowered:
            return True
    if b"\\u" in data:
        return True
    return b"%" in data and (form or len(data) <= 65536 and _FORM.match(data.decode("latin-1").strip()) is not None)


def _mask_text_body(text: str, fields: FrozenSet[str], pattern: Pattern[str], names: Tuple[str, ...],
                    content_type: Optional[str], *, truncated: bool) -> str:
    kind = (content_type or "").lower()
    if "form-data" in text.lower():
        text = mask_multipart(text, fields)
    if "<" in text:
        text = mask_xml(text, fields)
    if "x-www-form-urlencoded" in kind or _FORM.match(text.strip()):
        return mask_text(mask_form(text, fields), pattern, fields)
    if not truncated and text.lstrip()[:1] in ("{", "[") and ("NaN" in text or "Infinity" in text):
        # Valid JSON for Python but not for orjson: parsed and walked. (Other JSON
        # stored as base64 failed both parsers; mask_text handles it, and this too.)
        try:
            parsed = json.loads(text)  # the standard library accepts NaN and Infinity
        except (ValueError, RecursionError):
            pass
        else:
            return json.dumps(_mask_value(parsed, fields, pattern, names), ensure_ascii=False)
    return mask_text(text, pattern, fields)
