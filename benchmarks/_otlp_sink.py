"""A loopback OTLP/HTTP sink for the peers (apitally, OpenTelemetry): answers every
export with 200 and keeps the bodies undecoded, so that its own CPU stays small during
the load; `GET /stats` decodes them afterwards and counts the spans received; `GET /bytes`
is the bytes received so far, decoding nothing.

    python benchmarks/_otlp_sink.py --port 4318
"""
from __future__ import annotations

import argparse
import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Tuple

_lock = threading.Lock()
_bodies: List[Tuple[str, str, bytes]] = []   # (path, content-encoding, body)


def _span_count(bodies: List[Tuple[str, str, bytes]]) -> int:
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError:
        return -1
    spans = 0
    for path, encoding, body in bodies:
        if not path.startswith("/v1/traces"):
            continue
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans += len(scope_spans.spans)
    return spans


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with _lock:
            _bodies.append((self.path, (self.headers.get("content-encoding") or "").lower(), body))
        self.send_response(200)
        self.send_header("apitally-export-interval", "5")   # its shortest: delivery within the benchmark
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        with _lock:
            bodies = list(_bodies)
        if self.path.startswith("/bytes"):
            data = str(sum(len(b) for _, _, b in bodies)).encode()
        else:
            doc = {"posts": len(bodies), "bytes": sum(len(b) for _, _, b in bodies), "spans": _span_count(bodies)}
            data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    server.daemon_threads = True
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
