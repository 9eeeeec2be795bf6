"""Turn a captured exchange into Moesif's event JSON (a plain dict).

Field names, time format and body encoding follow Moesif's collector API
(``POST /v1/events/batch``).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

from .bodies import BodyBuffer, encode_body
from .multipart import MultipartSummary
from .capture import TRANSACTION_HEADER, Exchange, decode_headers

if TYPE_CHECKING:  # recording imports this module (through pipeline)
    from .recording import Identity


# The last second formatted, with its trailing dot: most calls fall in the same
# second as the previous one. One tuple, replaced whole (threads may share it).
_second_cache: Tuple[int, str] = (-1, "")
_MILLIS = tuple("%03d" % i for i in range(1000))


def _second_prefix(seconds: int) -> str:
    global _second_cache
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return prefix


def format_time(timestamp: float) -> str:
    """UTC ISO 8601 with milliseconds, as Moesif expects: 2026-11-24T00:24:01.412."""
    seconds = int(timestamp)
    return _second_prefix(seconds) + _MILLIS[int((timestamp - seconds) * 1000)]


def format_times(started: float, finished: float) -> Tuple[str, str]:
    """format_time() of both, the second's text made once when they share it (most
    calls): a third of the cost of two format_time() calls, once per call."""
    seconds = int(started)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = _second_prefix(seconds)
    finished_second = int(finished)
    if finished_second != seconds:
        return prefix + _MILLIS[int((started - seconds) * 1000)], format_time(finished)
    return (prefix + _MILLIS[int((started - seconds) * 1000)],
            prefix + _MILLIS[int((finished - finished_second) * 1000)])


def route_of(uri: str) -> str:
    """The path part of a full URL, for sampling and governance rules."""
    start = uri.find("://")
    slash = uri.find("/", start + 3 if start >= 0 else 0)
    if slash < 0:
        return "/"
    path = uri[slash:]
    query = path.find("?")
    return path if query < 0 else path[:query]


def attach_body(section: Dict[str, Any], buffer: Optional[BodyBuffer], headers: Mapping[str, str]) -> None:
    """Encode a captured body into an event's request or response section."""
    if buffer is None or not buffer.total_size:
        return
    value, encoding = encode_body(
        buffer.getvalue(),
        headers.get("content-type"),
        headers.get("content-encoding"),
        truncated=buffer.truncated,
        total_size=buffer.total_size,
    )
    if value is not None:
        section["body"] = value
        section["transfer_encoding"] = encoding


def add_optional_fields(event: Dict[str, Any], **fields: Any) -> None:
    """Moesif's optional top-level fields, left out when unknown."""
    for name, value in fields.items():
        if value is not None:
            event[name] = value


def build_event(exchange: Exchange, identity: Identity, api_version: Optional[str]) -> Dict[str, Any]:
    """The incoming call's event, with what the callbacks and sampling gave (`identity`)."""
    # Built as literals with the optional fields tested inline: this runs once per
    # call on the app's event loop, where every helper call and **kwargs dict shows.
    request_headers = exchange.request_headers
    if exchange.transaction_header and TRANSACTION_HEADER not in request_headers:
        # The exchange is finished with its headers: add the id in place.
        request_headers[TRANSACTION_HEADER] = exchange.transaction_id
    started_at = exchange.started_at
    finished_at = exchange.finished_at or time.time()
    request_time, response_time = format_times(started_at, finished_at)
    request: Dict[str, Any] = {
        "time": request_time,
        "uri": exchange.uri,
        "verb": exchange.scope.get("method", "GET"),
        "headers": request_headers,
        "ip_address": exchange.ip_address,
    }
    if api_version is not None:
        request["api_version"] = api_version
    body = exchange.request_body
    if body is not None:
        if isinstance(body, MultipartSummary):
            fields = body.result()
            if fields:
                request["body"] = fields
                request["transfer_encoding"] = "json"
        else:
            attach_body(request, body, request_headers)

    response_headers = decode_headers(exchange.response_raw_headers)
    status = exchange.status
    response: Dict[str, Any] = {
        "time": response_time,
        "status": status if status is not None else 500,
        "headers": response_headers,
    }
    if exchange.response_body is not None:
        attach_body(response, exchange.response_body, response_headers)

    event: Dict[str, Any] = {
        "request": request,
        "response": response,
        "direction": "Incoming",
        "transaction_id": exchange.transaction_id,
    }
    user_id, company_id, session_token, metadata, weight = identity
    if user_id is not None:
        event["user_id"] = user_id
    if company_id is not None:
        event["company_id"] = company_id
    if session_token is not None:
        event["session_token"] = session_token
    if metadata is not None:
        event["metadata"] = metadata
    if exchange.blocked_by is not None:
        event["blocked_by"] = exchange.blocked_by
    if weight is not None:
        event["weight"] = weight
    return event
