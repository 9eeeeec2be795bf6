"""A real HTTP server on 127.0.0.1 for the outgoing-capture tests, and their fixtures."""
from __future__ import annotations

import gzip
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List
from urllib.parse import parse_qs, urlsplit

import pytest

from moesifasgi import outgoing
from moesifasgi.settings import Settings, parse_settings


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle and the
    # client's delayed ACK add 40 ms to every keep-alive call.
    disable_nagle_algorithm = True
    server: "TargetServer"

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _chunks(self, pieces: Any, content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            for piece in pieces:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away: how far it got is the point
            self.close_connection = True
        finally:
            self.server.streamed.append(sent)

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            pieces = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
                if not size:
                    return b"".join(pieces)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        body = self._read_body()
        self.server.hits.append((self.command, self.path))
        path = parts.path
        if path == "/json":
            self._reply(200, json.dumps({"ok": True, "query": query}).encode())
        elif path == "/echo":
            self._reply(200, body, self.headers.get("Content-Type") or "application/octet-stream")
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._reply(code, json.dumps({"status": code}).encode())
        elif path == "/gzip":
            self._reply(200, gzip.compress(b'{"zipped": true}'), Content_Encoding="gzip")
        elif path == "/text":
            self._reply(200, b"plain text, not json", "text/plain")
        elif path == "/big":
            self._reply(200, b"x" * int(query.get("size", "1000")), "text/plain")
        elif path == "/chunks":
            count, size = int(query.get("n", "4")), int(query.get("size", "1000"))
            self._chunks(bytes([65 + i % 26]) * size for i in range(count))
        elif path == "/endless":
            deadline = time.monotonic() + 5

            def forever() -> Any:
                while time.monotonic() < deadline:
                    yield b"y" * 1024
                    time.sleep(0.002)

            self._chunks(forever())
        elif path == "/slow":
            time.sleep(float(query.get("delay", "1")))
            self._reply(200, b'{"slow": true}')
        elif path == "/redirect":
            self._reply(302, b"", "text/plain", Location="/json?from=redirect")
        else:
            self._reply(404, b'{"error": "no such path"}')


class TargetServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: List[tuple] = []
        self.streamed: List[int] = []  # bytes written by each finished chunked reply
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that lets go of a reply early (the streamed, timed-out and
        cancelled cases) breaks the pipe; that is the case under test, not a
        fault to print in the middle of the suite's output."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def refused_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing"


@pytest.fixture(scope="module")
def target():
    server = TargetServer()
    yield server
    server.stop()


@pytest.fixture
def capture(queue_path) -> Callable[..., Settings]:
    """`capture(**settings)` turns outgoing capture on into this test's queue; off afterwards."""

    def start(**settings: Any) -> Settings:
        options: Dict[str, Any] = {"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path}
        options.update(settings)
        parsed = parse_settings(options)
        outgoing.install(parsed)
        return parsed

    yield start
    outgoing.uninstall()
