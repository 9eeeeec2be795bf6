"""Async client for Moesif's collector API.

Every expected failure (HTTP error status, refused connection, timeout) comes back
as a result object with an ``outcome`` the flusher can act on; only programming
errors raise. Event rows arrive already JSON-encoded from the queue and are joined
as text: re-parsing them would cost CPU and could change what was stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Optional, Sequence, Type, Union

import httpx

from moesifasgi._version import USER_AGENT

from .backoff import parse_retry_after
from .http11 import Http11Poster, PostFailed
from .outcomes import PostOutcome

__all__ = [
    "AUTH",
    "DEFAULT_BASE_URI",
    "DEFAULT_TIMEOUT",
    "GZIP_LEVEL",
    "OK",
    "REJECT",
    "RETRY",
    "TOO_LARGE",
    "FetchResult",
    "MoesifClient",
    "PostOutcome",
    "PostResult",
    "classify_status",
]

logger = logging.getLogger(__name__)

# The outcomes by their short names, as the flusher's modules use them.
OK, RETRY, AUTH, REJECT = PostOutcome.OK, PostOutcome.RETRY, PostOutcome.AUTH, PostOutcome.REJECT
TOO_LARGE = PostOutcome.TOO_LARGE

DEFAULT_BASE_URI = "https://api.moesif.net"
# httpx's default is 5 s for everything; a 50 MB batch on a slow link needs longer
# to upload and for Moesif to answer, while a dead host should fail fast.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=10.0)
# On a batch of typical ~1 KB events, level 3 compresses almost as well as level 5
# for clearly less CPU, and hardly costs more than level 1; that CPU is the host's,
# shared with the API it serves.
GZIP_LEVEL = 3
# gzip through ISA-L when the optional `isal` package is installed
# (`pip install 'moesifasgi[fast]'`): the same format at a fifth of zlib's CPU
# (0.5 against 2.5-9 µs per event, `benchmarks/drain_benchmark.py` prints which
# one ran), the largest single cost of a drained event. Its level 1 compresses
# about as well as zlib's 3.
# Either way a gzip member with mtime 0: the same bytes for a retry.
try:
    from isal import isal_zlib as _isal_zlib

    COMPRESSOR = "isal"

    def _gzip(raw: bytes) -> bytes:
        return _isal_zlib.compress(raw, 1, 31)  # wbits 31: a gzip member
except ImportError:
    import gzip as _gzip_module

    COMPRESSOR = "zlib"

    def _gzip(raw: bytes) -> bytes:
        return _gzip_module.compress(raw, compresslevel=GZIP_LEVEL, mtime=0)
# Bodies above this are compressed in a worker thread so one huge batch does not
# stall the event loop for tens of milliseconds.
_THREAD_COMPRESS_BYTES = 1 << 20
_ERROR_TEXT_CHARS = 200

_AUTH_STATUSES = frozenset({401, 402, 403})
_RETRY_4XX = frozenset({408, 429})


def classify_status(status: int) -> PostOutcome:
    """Map an HTTP status from Moesif to an outcome constant."""
    if 200 <= status < 300:
        return OK
    if status in _AUTH_STATUSES:
        return AUTH
    if status == 413:
        return TOO_LARGE
    if status in _RETRY_4XX or status >= 500:
        return RETRY
    if 400 <= status < 500:
        return REJECT
    # 1xx/3xx should not reach us (no redirects followed); try again later
    # rather than drop data on a proxy's odd answer.
    return RETRY


@dataclass(frozen=True)
class PostResult:
    outcome: PostOutcome
    status: Optional[int] = None
    retry_after: Optional[float] = None
    config_etag: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK


@dataclass(frozen=True)
class FetchResult:
    status: Optional[int]
    data: Any = None
    etag: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


def _exc_text(exc: BaseException) -> str:
    detail = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {detail[:_ERROR_TEXT_CHARS]}"


def _http_error_text(response: Any) -> str:
    """'HTTP <status>: <the start of the body>' of an httpx or http11 response."""
    try:
        body = response.text
    except Exception:  # undecodable body: the status alone is enough
        body = ""
    body = " ".join(body[:_ERROR_TEXT_CHARS].split())
    return f"HTTP {response.status_code}: {body}" if body else f"HTTP {response.status_code}"


# MOESIF_HTTP_CLIENT=httpx sends the batch posts through httpx too (see http11.py).
HTTP_CLIENT_ENV = "MOESIF_HTTP_CLIENT"


def _uses_proxy(base_uri: str) -> bool:
    """Whether httpx would send to `base_uri` through a proxy from the environment
    (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, minus NO_PROXY): such posts stay on httpx."""
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(base_uri)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)


def _gzip_body(rows: Sequence[Union[str, bytes]]) -> bytes:
    if rows and isinstance(rows[0], str):  # profiles; event rows come as UTF-8 bytes
        raw = ("[" + ",".join(rows) + "]").encode("utf-8")  # type: ignore[arg-type]
    else:
        raw = b"[" + b",".join(rows) + b"]"  # type: ignore[arg-type]
    return _gzip(raw)


class MoesifClient:
    """One keep-alive connection pool to a Moesif collector.

    >>> async with MoesifClient("app-id", "http://127.0.0.1:8080") as client:  # doctest: +SKIP
    ...     result = await client.post_events(['{"transaction_id": "..."}'])
    """

    def __init__(
        self,
        application_id: str,
        base_uri: str = DEFAULT_BASE_URI,
        *,
        timeout: Union[httpx.Timeout, float] = DEFAULT_TIMEOUT,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        max_connections: int = 8,
    ) -> None:
        if not application_id:
            raise ValueError("application_id is required")
        self.base_uri = (base_uri or DEFAULT_BASE_URI).rstrip("/")
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        headers = {"X-Moesif-Application-Id": application_id, "User-Agent": USER_AGENT}
        timeouts = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=timeouts,
            transport=transport,
            limits=limits,
            follow_redirects=False,
        )
        # Batch posts go through the small HTTP/1.1 poster (a third of the CPU per
        # post), unless a transport is given (tests), a proxy applies, or the
        # operator asked for httpx.
        self._poster: Optional[Http11Poster] = None
        if (transport is None and os.environ.get(HTTP_CLIENT_ENV, "").lower() != "httpx"
                and not _uses_proxy(self.base_uri)):
            try:
                self._poster = Http11Poster(self.base_uri, headers, timeouts, max_connections=max_connections)
            except ValueError:  # a scheme httpx may know better
                self._poster = None

    def _url(self, path: str) -> str:
        return self.base_uri + (path if path.startswith("/") else "/" + path)

    async def post_batch(self, path: str, rows: Sequence[Union[str, bytes]],
                         application_id: Optional[str] = None) -> PostResult:
        """POST ``rows`` (JSON texts, or comma-joined runs of them) as one gzipped JSON array, under ``application_id``
        when given (events recorded by another app sharing the queue), else the client's."""
        joined_len = sum(len(r) for r in rows)
        if joined_len >= _THREAD_COMPRESS_BYTES:
            body = await asyncio.to_thread(_gzip_body, rows)
        else:
            body = _gzip_body(rows)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Encoding": "gzip",
        }
        if application_id:
            headers["X-Moesif-Application-Id"] = application_id
        if self._poster is not None:
            try:
                answer = await self._poster.post(path if path.startswith("/") else "/" + path, body, headers)
            except PostFailed as exc:
                logger.debug("POST %s failed: %s", path, exc)
                return PostResult(RETRY, error=str(exc)[:_ERROR_TEXT_CHARS + 40])
            return self._result(answer.status_code, answer.headers.get("retry-after"),
                                answer.headers.get("x-moesif-config-etag"), answer)
        try:
            response = await self._client.post(self._url(path), content=body, headers=headers)
        except httpx.HTTPError as exc:
            # TransportError covers refused/reset connections and timeouts; the
            # other HTTPErrors (decoding, redirects) are just as transient to us.
            logger.debug("POST %s failed: %s", path, exc)
            return PostResult(RETRY, error=_exc_text(exc))
        return self._result(response.status_code, response.headers.get("Retry-After"),
                            response.headers.get("X-Moesif-Config-ETag"), response)

    @staticmethod
    def _result(status: int, retry_after: Optional[str], config_etag: Optional[str], response: Any) -> PostResult:
        outcome = classify_status(status)
        return PostResult(
            outcome,
            status=status,
            retry_after=parse_retry_after(retry_after),
            config_etag=config_etag,
            error=None if outcome == OK else _http_error_text(response),
        )

    async def post_events(self, rows: Sequence[Union[str, bytes]], application_id: Optional[str] = None) -> PostResult:
        return await self.post_batch("/v1/events/batch", rows, application_id)

    async def post_users(self, rows: Sequence[str]) -> PostResult:
        return await self.post_batch("/v1/users/batch", rows)

    async def post_companies(self, rows: Sequence[str]) -> PostResult:
        return await self.post_batch("/v1/companies/batch", rows)

    async def get_json(self, path: str) -> FetchResult:
        """GET a JSON document; errors and non-JSON bodies come back in ``error``."""
        try:
            response = await self._client.get(
                self._url(path), headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            logger.debug("GET %s failed: %s", path, exc)
            return FetchResult(status=None, error=_exc_text(exc))
        status = response.status_code
        etag = response.headers.get("X-Moesif-Config-ETag")
        if not 200 <= status < 300:
            return FetchResult(status=status, etag=etag, error=_http_error_text(response))
        try:
            data = response.json()
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            return FetchResult(status=status, etag=etag, error=f"invalid JSON: {exc}"[:240])
        return FetchResult(status=status, data=data, etag=etag)

    async def get_config(self) -> FetchResult:
        return await self.get_json("/v1/config")

    async def get_rules(self) -> FetchResult:
        return await self.get_json("/v1/rules")

    async def aclose(self) -> None:
        if self._poster is not None:
            await self._poster.aclose()
        await self._client.aclose()

    async def __aenter__(self) -> MoesifClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()
