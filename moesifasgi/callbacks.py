"""Calling the user's settings callbacks, plain or `async def`, and what they receive.

A callback is the user's code running inside ours: it may raise, hang, or read
a body the app never read. None of that may cost the call its event, so
:func:`invoke` bounds an awaitable result by the call's deadline and lets the
caller decide what a failure means (the recording sequence leaves the field
out). What a callback's ``request`` gives for the body is fixed here:
``await request.body()`` is the captured body, or ``b""`` when it was not kept
(over ``MAX_BODY_BYTES``, ``LOG_BODY: False``, a chunked upload the app did not
read); ``await request.form()`` of a multipart upload gives each field's value
or file name (empty when the app never read the upload: uploads are not read
ahead). It never reads from the client.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable, Dict, Optional, Tuple

from starlette.datastructures import URL, FormData, Headers
from starlette.requests import Request

from .multipart import MultipartSummary, is_multipart
from .capture import Exchange


# Once one slow callback has spent the call's time, each later one still gets
# this long: enough for one that does not really wait (a cache hit), too short
# to hold a strict response noticeably longer.
LATE_GRACE = 0.05


class CallbackTimeout(Exception):
    """An awaitable callback did not finish before the call's deadline."""


async def invoke(function: Callable[..., Any], *args: Any, deadline: Optional[float] = None) -> Any:
    """Call `function(*args)`; await its result if awaitable, within `deadline`.

    `deadline` is a time.monotonic() value. A plain function cannot be
    interrupted: it runs to completion on the caller's thread. Raises what the
    function raises, or CallbackTimeout.
    """
    result = function(*args)
    if not inspect.isawaitable(result):
        return result
    return await settle(result, deadline)


async def settle(result: Any, deadline: Optional[float]) -> Any:
    """Await a callback's awaitable result within `deadline` (CallbackTimeout past it)."""
    if deadline is None:
        return await result
    try:
        return await asyncio.wait_for(result, max(LATE_GRACE, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise CallbackTimeout() from None


class _CallbackHeaders(Headers):
    """Starlette's Headers, with a `get` that answers a missing name without raising
    and catching KeyError (Mapping.get's way): IDENTIFY_USER reading a header most
    calls do not carry paid more for that exception than for the rest of its call.
    Same answers as Headers: the first value of a repeated name, names compared
    lowercased as bytes."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        wanted = key.lower().encode("latin-1")
        for name, value in self._list:
            if name == wanted:
                return value.decode("latin-1")
        return default


class CapturedResponse:
    """What callbacks get as `response`: the response as the client received it.

    It offers the parts of a Starlette Response that callbacks read
    (`status_code`, `headers`, `body`, `media_type`); the original body may be
    truncated to the capture cap, or None when LOG_BODY is off. Headers and body
    are made on first use: most callbacks read neither.
    """

    __slots__ = ("status_code", "_exchange", "_headers")

    def __init__(self, exchange: Exchange) -> None:
        self.status_code = exchange.status if exchange.status is not None else 500
        self._exchange = exchange
        self._headers: Optional[Headers] = None

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = _CallbackHeaders(raw=self._exchange.response_raw_headers)
        return self._headers

    @property
    def body(self) -> Optional[bytes]:
        buffer = self._exchange.response_body
        return buffer.getvalue() if buffer is not None else None

    @property
    def media_type(self) -> Optional[str]:
        value = self.headers.get("content-type")
        return value.split(";", 1)[0].strip() if value else None

    def __repr__(self) -> str:
        return f"CapturedResponse(status_code={self.status_code})"


async def _nothing_more() -> Any:
    # Callbacks run after the app: the client has nothing more to send them.
    return {"type": "http.disconnect"}


# Starlette URLs of recent calls: building one from a scope (host header
# parsing, joining, splitting again for .path) cost a SKIP callback that reads
# request.url.path more than the rest of its call. A URL is immutable, and the
# same scope fields give the same URL, so calls to the same address share one.
_URL_CACHE: Dict[Tuple[Any, ...], URL] = {}
_URL_CACHE_SIZE = 512


def _url_of(scope: Any) -> URL:
    host = None
    for name, value in scope.get("headers") or ():
        if name == b"host":
            host = value
            break
    server = scope.get("server")
    key = (scope.get("scheme"), tuple(server) if server else None, scope.get("root_path"), scope.get("path"),
           scope.get("query_string"), host)
    url = _URL_CACHE.get(key)
    if url is None:
        url = URL(scope=scope)
        if len(_URL_CACHE) >= _URL_CACHE_SIZE:
            _URL_CACHE.clear()
        _URL_CACHE[key] = url
    return url


class CallbackRequest(Request):
    """The Starlette Request callbacks receive; `url` as Starlette builds it, shared
    between calls to the same address."""

    @property
    def url(self) -> URL:
        url = self.__dict__.get("_url")
        if url is None:
            url = self._url = _url_of(self.scope)
        return url

    @property
    def headers(self) -> Headers:
        headers = self.__dict__.get("_headers")
        if headers is None:
            headers = self._headers = _CallbackHeaders(scope=self.scope)
        return headers


def request_for(exchange: Exchange) -> Request:
    """A Starlette Request over the captured scope whose body()/json()/form() never
    touch the client's stream: the captured body, or b"" when it was not kept."""
    request = CallbackRequest(exchange.scope, _nothing_more)
    summary = exchange.request_body
    if summary is None:  # no body came (most calls): nothing more to look at
        request._body = b""  # Starlette's own cache attribute for body()
        if "content-type" in exchange.request_headers and is_multipart(exchange.request_headers["content-type"]):
            request._form = FormData()  # an upload the app never read: nothing was kept
        return request
    body = exchange.request_body_bytes()
    request._body = b"" if body is None else body
    if isinstance(summary, MultipartSummary):
        pairs = []
        for name, value in summary.result().items():
            for item in value if isinstance(value, list) else [value]:
                pairs.append((name, item))
        request._form = FormData(pairs)
    elif is_multipart(exchange.request_headers.get("content-type")):
        request._form = FormData()  # an upload the app never read: nothing was kept
    return request


def response_for(exchange: Exchange) -> CapturedResponse:
    return CapturedResponse(exchange)
