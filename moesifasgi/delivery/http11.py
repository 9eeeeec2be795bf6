"""A small keep-alive HTTP/1.1 poster for the batch posts, over asyncio streams.

Why not httpx for these: measured against the loopback stand-in, a post of 100
events cost about 2.8 ms of CPU in httpx/httpcore/anyio beyond its gzip, and
0.3-0.4 ms written out here (``benchmarks/drain_benchmark.py`` prints the
posting limit; the README has the figures). The drain posts thousands of
batches, and that CPU is the host's. Everything else stays on httpx: GETs
(config, rules), and every post when a proxy is configured in the environment
or a custom transport is given (`client.MoesifClient` decides).

What it does: one POST at a time per connection, `max_connections` at most,
idle ones reused for `keepalive_expiry` seconds; TLS with httpx's own default
context (certifi, SSL_CERT_FILE/SSL_CERT_DIR); the connect, write, read and pool
timeouts of an `httpx.Timeout`; responses framed by Content-Length, chunked or
closed connections. A post on a reused connection that the server had closed
meanwhile is sent once more on a new one, as httpcore does.
"""
from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
import zlib
from typing import Dict, List, Mapping, Optional, Tuple

import httpx

__all__ = ["Http11Poster", "Response", "PostFailed"]

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_KEPT = 64 * 1024  # an answer's body is only read for its error text
# Moesif answers in a few bytes: a larger answer (a misbehaving proxy) is not
# read into memory; the connection is dropped and the post counts as failed.
_MAX_BODY_READ = 1024 * 1024


def _checked(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The headers as they are, refused (ValueError) if a name or value could split the request."""
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or "\0" in value or ":" in name:
            raise ValueError(f"header {name!r} holds a line break, NUL or colon")
    return headers


class PostFailed(Exception):
    """The post did not get an HTTP answer (connection, timeout, protocol)."""


class Response:
    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # lower-cased names
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Connection:
    __slots__ = ("reader", "writer", "idle_since", "used")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()
        self.used = False

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already gone
            pass


class Http11Poster:
    def __init__(self, base_uri: str, headers: Mapping[str, str], timeout: httpx.Timeout, *,
                 max_connections: int = 8, keepalive_expiry: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(base_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported base URI {base_uri!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        host_header = self.host if ":" not in self.host else f"[{self.host}]"
        self._host_header = host_header if default_port else f"{host_header}:{self.port}"
        self._headers = dict(_checked(headers))
        self.timeout = timeout
        self.keepalive_expiry = keepalive_expiry
        self._idle: List[_Connection] = []
        self.max_connections = max_connections
        # Made on the first post, in the loop that posts: on Python 3.9 an asyncio
        # primitive belongs to the loop current when it is created.
        self._slots: Optional[asyncio.Semaphore] = None
        self._ssl: Optional[ssl.SSLContext] = None
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context() if hasattr(httpx, "create_ssl_context") else ssl.create_default_context()
        return self._ssl

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST `body` to `path` (below the base URI's path); raises PostFailed."""
        if self._closed:
            raise PostFailed("the client was closed")
        merged = dict(self._headers)
        try:
            merged.update(_checked(headers))
        except ValueError as exc:
            raise PostFailed(f"LocalProtocolError: {exc}") from None
        head = [f"POST {self.prefix}{path} HTTP/1.1", f"Host: {self._host_header}",
                f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in merged.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        slots = self._slots
        try:
            await asyncio.wait_for(slots.acquire(), self.timeout.pool)
        except asyncio.TimeoutError as exc:
            raise PostFailed("PoolTimeout: no connection free") from exc
        try:
            for attempt in (0, 1):
                conn = await self._connection()
                reused = conn.used
                try:
                    response, keep = await self._exchange(conn, request)
                except _StaleConnection:
                    conn.close()
                    if reused and attempt == 0:
                        continue  # the server closed it while idle: once more on a new one
                    raise PostFailed("RemoteProtocolError: the server closed the connection") from None
                except BaseException:
                    conn.close()
                    raise
                if keep and not self._closed:
                    conn.used = True
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                else:
                    conn.close()
                return response
            raise PostFailed("unreachable")  # pragma: no cover
        finally:
            slots.release()

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.keepalive_expiry and not conn.reader.at_eof():
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self._ssl_context() if self.tls else None,
                                        server_hostname=self.host if self.tls else None, limit=_MAX_HEADER_BYTES),
                self.timeout.connect)
        except asyncio.TimeoutError as exc:
            raise PostFailed(f"ConnectTimeout: no connection to {self.host}:{self.port} within "
                             f"{self.timeout.connect} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise PostFailed(f"ConnectError: {exc}") from exc
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, request: bytes) -> Tuple[Response, bool]:
        try:
            conn.writer.write(request)
            await asyncio.wait_for(conn.writer.drain(), self.timeout.write)
        except asyncio.TimeoutError as exc:
            raise PostFailed(f"WriteTimeout: after {self.timeout.write} s") from exc
        except (ConnectionError, OSError) as exc:
            raise _StaleConnection() from exc
        try:
            return await asyncio.wait_for(self._read_response(conn.reader), self.timeout.read)
        except asyncio.TimeoutError as exc:
            raise PostFailed(f"ReadTimeout: no answer within {self.timeout.read} s") from exc

    async def _read_response(self, reader: asyncio.StreamReader) -> Tuple[Response, bool]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection() from exc
            raise PostFailed("RemoteProtocolError: the answer ended early") from exc
        except (ConnectionError, OSError) as exc:
            raise _StaleConnection() from exc
        except asyncio.LimitOverrunError as exc:
            raise PostFailed("RemoteProtocolError: answer headers too long") from exc
        lines = head.decode("latin-1").split("\r\n")
        try:
            version, status_text = lines[0].split(" ", 2)[:2]
            status = int(status_text)
        except ValueError as exc:
            raise PostFailed(f"RemoteProtocolError: bad status line {lines[0][:80]!r}") from exc
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                content = await self._read_chunked(reader)
            elif "content-length" in headers:
                length = int(headers["content-length"])
                if length > _MAX_BODY_READ:
                    raise PostFailed(f"RemoteProtocolError: an answer of {length} bytes")
                content = await reader.readexactly(length)
            elif status in (204, 304) or 100 <= status < 200:
                content = b""
            else:
                content = await reader.read(_MAX_BODY_KEPT)
                keep = False
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
            raise PostFailed(f"RemoteProtocolError: the answer's body ended early ({exc})") from exc
        if content and "gzip" in headers.get("content-encoding", "").lower():
            try:  # at most what is kept: a small answer may inflate to gigabytes
                content = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(content, _MAX_BODY_KEPT)
            except zlib.error:
                pass
        return Response(status, headers, content[:_MAX_BODY_KEPT]), keep

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: List[bytes] = []
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
            total += size
            if total > _MAX_BODY_READ:
                raise PostFailed(f"RemoteProtocolError: an answer of more than {_MAX_BODY_READ} bytes")
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _StaleConnection(Exception):
    """Nothing came back: the server had closed the connection."""
