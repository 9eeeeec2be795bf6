"""One outgoing HTTP exchange, as either library made it, and the Moesif event it becomes.

The patches fill an `OutgoingCall` with plain values (and the library's own
request and response objects, for the callbacks); everything after that is
library-agnostic. Bodies follow the incoming rules exactly: the same cap, the
same JSON/base64 choice, the same truncation marker, multipart summarised.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple, Union

from ..bodies import BodyBuffer, encode_body
from ..multipart import MultipartSummary, is_multipart
from ..capture import new_transaction_id
from ..event_builder import add_optional_fields, format_time

__all__ = ["FAILED_STATUS", "OutgoingCall", "build_event", "error_body", "plain_headers"]

# The status of a call that got no response at all (refused, timed out, reset):
# no HTTP status is possible, and 0 cannot be mistaken for one the server sent.
FAILED_STATUS = 0


class OutgoingCall:
    __slots__ = (
        "request", "response", "method", "url", "request_headers", "request_body",
        "status", "response_headers", "response_body", "response_encoding",
        "started_at", "finished_at", "error",
    )

    def __init__(
        self,
        *,
        request: Any,
        response: Any,
        method: str,
        url: str,
        request_headers: Dict[str, str],
        request_body: Optional[bytes],
        status: int,
        response_headers: Dict[str, str],
        response_body: Optional[BodyBuffer],
        response_encoding: Optional[str],
        started_at: float,
        finished_at: float,
        error: Optional[BaseException] = None,
    ) -> None:
        self.request = request  # the library's request object, for the callbacks
        self.response = response  # the library's response object, None when the call failed
        self.method = method
        self.url = url
        self.request_headers = request_headers
        self.request_body = request_body  # complete bytes, or None when not kept/streamed
        self.status = status
        self.response_headers = response_headers
        self.response_body = response_body
        # The Content-Encoding of the bytes in response_body: None when the library
        # had already decoded them (requests always; httpx unless streaming).
        self.response_encoding = response_encoding
        self.started_at = started_at
        self.finished_at = finished_at
        self.error = error


def plain_headers(items: Iterable[Tuple[Any, Any]]) -> Dict[str, str]:
    """Lowercase name -> value, as in incoming events; bytes decoded as latin-1."""
    pairs = list(items)
    try:
        headers = {name.lower(): value for name, value in pairs}
        # The usual case: text names and values, no name twice.
        if len(headers) == len(pairs) and all(type(value) is str for value in headers.values()):
            return headers
    except (AttributeError, TypeError):
        pass
    headers = {}
    for name, value in pairs:
        if not isinstance(name, str):
            name = bytes(name).decode("latin-1")
        if not isinstance(value, str):
            value = bytes(value).decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
        key = name.lower()
        headers[key] = headers[key] + ", " + value if key in headers else value
    return headers


def error_body(error: BaseException) -> Dict[str, Any]:
    """What a failed call's event carries as its response body."""
    kind = type(error)
    return {"error": {"type": f"{kind.__module__}.{kind.__qualname__}", "message": str(error)}}


def _request_body(data: bytes, headers: Dict[str, str], limit: int) -> Tuple[Any, Optional[str]]:
    content_type = headers.get("content-type")
    if is_multipart(content_type):
        summary = MultipartSummary.from_content_type(content_type)
        if summary is not None:
            summary.feed(data)
            fields = summary.result()
            return (fields, "json") if fields else (None, None)
    buffer = BodyBuffer(limit)
    buffer.append(data)
    return encode_body(
        buffer.getvalue(), content_type, headers.get("content-encoding"),
        truncated=buffer.truncated, total_size=buffer.total_size, limit=limit,
    )


def _response_body(buffer: BodyBuffer, call: OutgoingCall, limit: int) -> Tuple[Any, Optional[str]]:
    return encode_body(
        buffer.getvalue(), call.response_headers.get("content-type"), call.response_encoding,
        truncated=buffer.truncated, total_size=buffer.total_size, limit=limit,
    )


def build_event(
    call: OutgoingCall,
    *,
    body_limit: int,
    api_version: Optional[str],
    user_id: Optional[str],
    company_id: Optional[str],
    session_token: Optional[str],
    metadata: Any,
    weight: Optional[int],
) -> Dict[str, Any]:
    request: Dict[str, Any] = {
        "time": format_time(call.started_at),
        "uri": call.url,
        "verb": call.method,
        "headers": call.request_headers,
    }
    if api_version is not None:
        request["api_version"] = api_version
    if call.request_body:
        value, encoding = _request_body(call.request_body, call.request_headers, body_limit)
        if value is not None:
            request["body"] = value
            request["transfer_encoding"] = encoding

    response: Dict[str, Any] = {
        "time": format_time(call.finished_at),
        "status": call.status,
        "headers": call.response_headers,
    }
    body: Union[BodyBuffer, None] = call.response_body
    if call.error is not None and call.response is None:
        response["body"] = error_body(call.error)
        response["transfer_encoding"] = "json"
    elif body is not None and body.total_size:
        value, encoding = _response_body(body, call, body_limit)
        if value is not None:
            response["body"] = value
            response["transfer_encoding"] = encoding

    event: Dict[str, Any] = {
        "request": request,
        "response": response,
        "direction": "Outgoing",
        "transaction_id": new_transaction_id(),
    }
    add_optional_fields(
        event, user_id=user_id, company_id=company_id, session_token=session_token, metadata=metadata, weight=weight,
    )
    return event
