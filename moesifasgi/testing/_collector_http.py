"""HTTP plumbing for the local collector: server, handler, body decoding, faults.

Kept apart from ``local_collector`` so that module reads as collector behaviour
(what is recorded and served) rather than socket handling and failure injection.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, NamedTuple, Optional, Protocol, Tuple

logger = logging.getLogger(__name__)

_MAX_BODY = 64 << 20  # Moesif's own limit is 50 MB per batch


_FAULT_BODY = b'{"error":"injected fault"}'


class Reply(NamedTuple):
    status: int
    headers: Mapping[str, str]
    payload: bytes
    items: int = 0  # records accepted, for the request log


class Collector(Protocol):
    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply: ...
    def _track(self, conn: Any, alive: bool) -> None: ...
    def _count(self, method: str, path: str, status: int, items: int) -> None: ...


def read_body(rfile: BinaryIO, headers: Mapping[str, str]) -> bytes:
    """Read exactly one request body so the kept-alive connection stays in sync."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        parts = []
        total = 0
        while True:
            size_line = rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ValueError("bad chunk size") from None
            if size == 0:
                while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > _MAX_BODY:
                raise ValueError("body too large")
            parts.append(rfile.read(size))
            rfile.readline(1024)  # CRLF after each chunk
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        raise ValueError("bad Content-Length") from None
    if length < 0 or length > _MAX_BODY:
        raise ValueError("bad Content-Length")
    body = rfile.read(length) if length else b""
    if len(body) != length:
        raise ValueError("truncated body")
    return body


def decode_items(headers: Mapping[str, str], body: bytes, is_batch: bool) -> List[Dict[str, Any]]:
    """Gunzip and parse a POST body into records; ValueError says what is wrong."""
    try:
        if (headers.get("Content-Encoding") or "").lower() == "gzip":
            body = gzip.decompress(body)
        doc = json.loads(body)
    except (OSError, EOFError, ValueError) as exc:
        raise ValueError(f"undecodable body: {exc}") from None
    items = doc if is_batch else [doc]
    if not isinstance(doc, list if is_batch else dict) or not all(
        isinstance(item, dict) for item in items
    ):
        raise ValueError("batch must be an array of objects" if is_batch else "body must be an object")
    return items


def header_problems(path: str, headers: Mapping[str, str]) -> List[str]:
    """What a real client should have sent but did not (recorded, not refused)."""
    problems = []
    content_type = headers.get("Content-Type") or ""
    if not content_type.startswith("application/json"):
        problems.append(f"POST {path}: Content-Type {content_type!r}")
    agent = headers.get("User-Agent") or ""
    if not agent or agent.endswith("/None"):
        problems.append(f"POST {path}: User-Agent {agent!r}")
    return problems


class FaultPlan:
    """Programmable misbehaviour, thread-safe. Faults apply to POSTs (the
    ingestion path) unless ``method="GET"`` or ``"*"`` is given, so a config poll
    does not eat a fault meant for an event post. ``fail_next`` entries fire
    first, in order, then an active ``fail_for`` window.
    """

    _cond: threading.Condition

    def fail_next(self, status: int, count: int = 1, headers: Optional[Mapping[str, str]] = None,
                  *, method: str = "POST") -> None:
        """Answer the next ``count`` matching requests with ``status``."""
        if count < 1:
            return
        with self._cond:
            self._fail_queue.append([status, count, dict(headers or {}), method])

    def fail_for(self, status: int, seconds: float, headers: Optional[Mapping[str, str]] = None,
                 *, method: str = "POST") -> None:
        """Answer every matching request with ``status`` for ``seconds`` from now."""
        with self._cond:
            self._fail_window = (time.monotonic() + seconds, status, dict(headers or {}), method)

    def reject_events_where(self, predicate: Optional[Callable[[Dict[str, Any]], bool]]) -> None:
        """Answer 400 to any batch holding an event the predicate selects (None clears)."""
        with self._cond:
            self._reject = predicate

    def delay(self, seconds: float) -> None:
        """Sleep this long before answering each request (0 to stop)."""
        self._delay = max(0.0, seconds)

    def reset_faults(self) -> None:
        with self._cond:
            self._fail_queue: deque[List[Any]] = deque()
            self._fail_window: Optional[Tuple[float, int, Dict[str, str], str]] = None
            self._reject: Optional[Callable[[Dict[str, Any]], bool]] = None
            self._delay = 0.0

    def _take_fault(self, method: str) -> Optional[Reply]:
        with self._cond:
            if self._fail_queue and self._fail_queue[0][3] in (method, "*"):
                entry = self._fail_queue[0]
                entry[1] -= 1
                if entry[1] <= 0:
                    self._fail_queue.popleft()
                return Reply(entry[0], entry[2], _FAULT_BODY)
            window = self._fail_window
            if window is not None and window[3] in (method, "*"):
                if time.monotonic() < window[0]:
                    return Reply(window[1], window[2], _FAULT_BODY)
                self._fail_window = None
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # With kept-alive connections, server_close() would otherwise wait for every
    # client to hang up; the collector cuts them itself on stop().
    block_on_close = False
    request_queue_size = 256
    collector: Collector

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (or a connection cut by stop()) is routine here;
        # anything else keeps socketserver's traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            logger.debug("connection from %s dropped", client_address)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK can add ~40 ms to every response.
    disable_nagle_algorithm = True
    server_version = "moesif-local-collector"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.collector._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.collector._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _serve(self) -> None:
        collector = self.server.collector
        try:
            body = read_body(self.rfile, self.headers)
        except ValueError as exc:
            self.close_connection = True
            self.send_error(400, str(exc))
            return
        try:
            reply = collector.handle(self.command, self.path, self.headers, body)
        except Exception:
            # A bug here (or in a test's predicate) must show up as a 500, not a
            # silently dropped connection.
            logger.exception("local collector failed on %s %s", self.command, self.path)
            reply = Reply(500, {}, b'{"error":"internal"}')
        collector._count(self.command, self.path.split("?", 1)[0], reply.status, reply.items)
        self.send_response_only(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.payload)))
        self.end_headers()
        self.wfile.write(reply.payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


def make_server(host: str, port: int, collector: Collector) -> ThreadingHTTPServer:
    server = _Server((host, port), _Handler)
    server.collector = collector
    return server
