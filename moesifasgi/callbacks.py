"""Calling the user's settings callbacks, plain or `async def`, and what they receive."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from starlette.datastructures import Headers
from starlette.requests import Request

from .capture import Exchange


class CallbackError(Exception):
    """A user callback raised; the event it was building is dropped."""

    def __init__(self, name: str, original: BaseException) -> None:
        super().__init__(f"{name} raised {type(original).__name__}: {original}")
        self.name = name
        self.original = original


async def invoke(name: str, function: Callable[..., Any], *args: Any) -> Any:
    try:
        result = function(*args)
        if inspect.isawaitable(result):
            result = await result
        return result
    except Exception as exc:
        raise CallbackError(name, exc) from exc


class CapturedResponse:
    """What callbacks get as `response`: the response as the client received it.

    It offers the parts of a Starlette Response that callbacks read
    (`status_code`, `headers`, `body`, `media_type`); the original body may be
    truncated to the capture cap, or None when LOG_BODY is off.
    """

    __slots__ = ("status_code", "headers", "body")

    def __init__(self, status_code: int, headers: Headers, body: Optional[bytes]) -> None:
        self.status_code = status_code
        self.headers = headers
        self.body = body

    @property
    def media_type(self) -> Optional[str]:
        value = self.headers.get("content-type")
        return value.split(";", 1)[0].strip() if value else None

    def __repr__(self) -> str:
        return f"CapturedResponse(status_code={self.status_code})"


def request_for(exchange: Exchange) -> Request:
    """A Starlette Request over the captured scope; `await request.body()` returns
    the captured body (when complete) instead of reading a stream already consumed."""
    request = Request(exchange.scope)
    body = exchange.request_body_bytes()
    if body is None and exchange.request_body is None:
        body = b""  # nothing was received (or LOG_BODY is off): never a closed stream
    if body is not None:
        request._body = body  # Starlette's own cache attribute for body()
    return request


def response_for(exchange: Exchange) -> CapturedResponse:
    body = exchange.response_body.getvalue() if exchange.response_body is not None else None
    return CapturedResponse(
        exchange.status if exchange.status is not None else 500,
        Headers(raw=exchange.response_raw_headers),
        body,
    )
