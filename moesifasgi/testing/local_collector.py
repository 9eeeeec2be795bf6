"""A Moesif-compatible collector on loopback, for integration tests, demos and benchmarks.

It speaks the same HTTP as api.moesif.net for the endpoints we use, records what
it receives, and can be told to misbehave (errors, throttling, slow answers,
poisoned rows) so that retry, split and recovery paths run against a real socket.

    python -m moesifasgi.testing.local_collector --port 0 --record events.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from ._collector_http import FaultPlan, Reply, decode_items, header_problems, make_server

__all__ = ["DEFAULT_CONFIG", "LocalCollector", "main"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIG: Dict[str, Any] = {
    "sample_rate": 100,
    "user_sample_rate": {},
    "company_sample_rate": {},
    "regex_config": [],
    "user_rules": {},
    "company_rules": {},
}
# path -> (kind of record, whether the body must be a JSON array)
_POST_ROUTES = {
    "/v1/events/batch": ("events", True),
    "/v1/events": ("events", False),
    "/v1/users/batch": ("users", True),
    "/v1/users": ("users", False),
    "/v1/companies/batch": ("companies", True),
    "/v1/companies": ("companies", False),
}
_GET_ROUTES = ("/v1/config", "/v1/rules")
_CREATED = b"{}"


def _etag(doc: Any) -> str:
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


class LocalCollector(FaultPlan):
    """Moesif collector on ``host:port`` (port 0 picks a free one); thread-safe.

    ``keep_events=False`` keeps only ids and counts, for long benchmarks.
    ``record_file`` appends every received event as a JSON line.
    ``raw_record_file`` is for throughput benchmarks: event posts are appended
    undecoded (see `write_raw_frame`) and answered 201 at once, so that the
    stand-in spends next to no CPU on a machine it shares with the app under test
    (in production that work is Moesif's); decode the file after the load with
    `read_raw_frames`. Poison-row rejection does not apply to them.
    Fault programming (``fail_next``, ``fail_for``, ``reject_events_where``,
    ``delay``, ``reset_faults``) comes from ``FaultPlan``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, application_id: Optional[str] = None,
                 *, keep_events: bool = True, record_file: Optional[str] = None,
                 raw_record_file: Optional[str] = None) -> None:
        self.host, self.port, self.application_id = host, port, application_id
        self.keep_events = keep_events
        self._record = open(record_file, "a", encoding="utf-8") if record_file else None
        self._raw = open(raw_record_file, "ab") if raw_record_file else None
        self._cond = threading.Condition(threading.Lock())
        self.events: List[Dict[str, Any]] = []
        self.users: List[Dict[str, Any]] = []
        self.companies: List[Dict[str, Any]] = []
        self.header_errors: List[str] = []
        self.body_errors: List[str] = []
        self.request_log: List[Tuple[str, str, int, int]] = []  # method, path, status, items
        self.requests = 0
        self.event_count = 0
        # transaction id -> the X-Moesif-Application-Id it was posted under
        self.application_of: Dict[str, str] = {}
        self._ids: List[str] = []
        self._seen: Set[str] = set()
        self._duplicates = 0
        self.config: Dict[str, Any] = json.loads(json.dumps(DEFAULT_CONFIG))
        self.config_etag = _etag(self.config)
        self.rules: List[Any] = []
        self.reset_faults()
        self._server: Any = None
        self._thread: Optional[threading.Thread] = None
        self._conns: Set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalCollector:
        """Listen and serve in a daemon thread; after ``stop()`` it reuses the same port."""
        if self._server is not None:
            return self
        server = make_server(self.host, self.port, self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"local-collector:{self.port}", daemon=True)
        self._thread.start()
        logger.info("local collector listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections, like a collector outage."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._cond:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._record is not None:
            self._record.flush()

    def close(self) -> None:
        """Stop, and close the record file (a later start() no longer records)."""
        self.stop()
        with self._cond:
            record, self._record = self._record, None
            raw, self._raw = self._raw, None
        if record is not None:
            record.close()
        if raw is not None:
            raw.close()

    def __enter__(self) -> LocalCollector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what was received -------------------------------------------------
    def transaction_ids(self) -> List[str]:
        """Ids of received events in arrival order (events without one are skipped)."""
        with self._cond:
            return list(self._ids)

    def distinct_transaction_ids(self) -> Set[str]:
        with self._cond:
            return set(self._seen)

    def duplicates(self) -> int:
        """How many received events repeated an already seen ``transaction_id``."""
        with self._cond:
            return self._duplicates

    def wait_for(self, n_events: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n_events`` events arrived; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.event_count >= n_events, timeout)

    def stats(self) -> Dict[str, int]:
        with self._cond:
            return {"requests": self.requests, "events": self.event_count,
                    "distinct": len(self._seen), "duplicates": self._duplicates,
                    "users": len(self.users), "companies": len(self.companies)}

    # -- programming ------------------------------------------------------
    def set_config(self, config: Mapping[str, Any]) -> str:
        """Replace the served config; returns the new ETag."""
        with self._cond:
            self.config = dict(config)
            self.config_etag = _etag(self.config)
            return self.config_etag

    def set_rules(self, rules: List[Any]) -> None:
        with self._cond:
            self.rules = list(rules)

    # -- request handling (called from server threads) ---------------------
    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        path = path.split("?", 1)[0]
        if self._delay:
            time.sleep(self._delay)
        route = _POST_ROUTES.get(path)
        if route is None and path not in _GET_ROUTES:
            return Reply(404, {}, b'{"error":"not found"}')
        allowed = "POST" if route else "GET"
        if method != allowed:
            return Reply(405, {"Allow": allowed}, b'{"error":"method not allowed"}')
        app_id = headers.get("X-Moesif-Application-Id")
        if not app_id or (self.application_id is not None and app_id != self.application_id):
            with self._cond:
                self.header_errors.append(f"{method} {path}: bad X-Moesif-Application-Id")
            return Reply(401, {}, b'{"error":"unauthorized"}')
        fault = self._take_fault(method)
        if fault is not None:
            return fault
        if route is None:
            with self._cond:
                doc = self.config if path == "/v1/config" else self.rules
                return Reply(200, {"X-Moesif-Config-ETag": self.config_etag},
                             json.dumps(doc).encode())
        return self._ingest(path, route, headers, body)

    def _ingest(self, path: str, route: Tuple[str, bool], headers: Mapping[str, str],
                body: bytes) -> Reply:
        kind, is_batch = route
        if self._raw is not None and kind == "events" and is_batch:
            with self._cond:
                write_raw_frame(self._raw, headers, body)
            return Reply(201, {"X-Moesif-Config-ETag": self.config_etag}, _CREATED, 0)
        problems = header_problems(path, headers)
        try:
            items = decode_items(headers, body, is_batch)
        except ValueError as exc:
            items, error = [], f"POST {path}: {exc}"
        else:
            error = None
            reject = self._reject
            if reject is not None and kind == "events" and any(reject(e) for e in items):
                error = ""  # the caller's poison row, not a protocol problem
        with self._cond:
            self.header_errors.extend(problems)
            if error is not None:
                if error:
                    self.body_errors.append(error)
                return Reply(400, {}, b'{"error":"bad request"}')
            if kind == "events":
                self._record_events(items, headers.get("X-Moesif-Application-Id") or "")
            else:
                getattr(self, kind).extend(items)
            return Reply(201, {"X-Moesif-Config-ETag": self.config_etag}, _CREATED, len(items))

    def _record_events(self, items: List[Dict[str, Any]], application_id: str = "") -> None:
        # Caller holds the lock.
        if self.keep_events:
            self.events.extend(items)
        for event in items:
            tid = event.get("transaction_id")
            if tid is None:
                continue
            self._ids.append(tid)
            self.application_of[tid] = application_id
            if tid in self._seen:
                self._duplicates += 1
            else:
                self._seen.add(tid)
        self.event_count += len(items)
        if self._record is not None:
            self._record.write("".join(json.dumps(e) + "\n" for e in items))
            self._record.flush()
        self._cond.notify_all()

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._cond:
            (self._conns.add if alive else self._conns.discard)(conn)

    def _count(self, method: str, path: str, status: int, items: int) -> None:
        with self._cond:
            self.requests += 1
            self.request_log.append((method, path, status, items))


def write_raw_frame(out: Any, headers: Mapping[str, str], body: bytes) -> None:
    """One posted batch: b"G" (gzip) or b"P" (plain), 4-byte big-endian length, the body."""
    gzipped = (headers.get("Content-Encoding") or "").lower() == "gzip"
    out.write((b"G" if gzipped else b"P") + len(body).to_bytes(4, "big") + body)
    out.flush()


def read_raw_frames(data: bytes) -> Tuple[List[Dict[str, Any]], int]:
    """(events decoded from the complete frames in `data`, bytes consumed)."""
    events: List[Dict[str, Any]] = []
    pos = 0
    while pos + 5 <= len(data):
        size = int.from_bytes(data[pos + 1:pos + 5], "big")
        if pos + 5 + size > len(data):
            break  # a frame still being written
        kind, body = data[pos:pos + 1], data[pos + 5:pos + 5 + size]
        pos += 5 + size
        try:
            events.extend(decode_items({"Content-Encoding": "gzip" if kind == b"G" else ""}, body, True))
        except ValueError:
            continue
    return events, pos


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run a loopback Moesif-compatible collector.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--app-id", default=None, help="accept only this application id")
    parser.add_argument("--record", metavar="FILE.jsonl", help="append events as JSON lines")
    parser.add_argument("--record-raw", metavar="FILE",
                        help="append event posts undecoded (benchmarks: decode later with read_raw_frames)")
    parser.add_argument("--verbose", action="store_true", help="print a summary every few seconds")
    parser.add_argument("--interval", type=float, default=5.0, help="summary period (seconds)")
    args = parser.parse_args(argv)
    # The handler only flips a flag: taking a lock inside a signal handler can
    # deadlock if the main thread was interrupted while holding it.
    stop_signals: List[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stop_signals.append(signum))
    collector = LocalCollector(args.host, args.port, args.app_id,
                               keep_events=False, record_file=args.record, raw_record_file=args.record_raw)
    collector.start()
    print(f"listening on {collector.url}", flush=True)
    last_time, last_events = time.monotonic(), 0
    try:
        while not stop_signals:
            time.sleep(0.1)
            now = time.monotonic()
            if args.verbose and now - last_time >= args.interval:
                stats = collector.stats()
                rate = (stats["events"] - last_events) / (now - last_time)
                last_time, last_events = now, stats["events"]
                print(_summary(stats) + f" rate={rate:.0f}/s", flush=True)
    finally:
        collector.close()
    if args.verbose:
        print("stopped: " + _summary(collector.stats()), flush=True)
    return 0


def _summary(stats: Dict[str, int]) -> str:
    return " ".join(f"{key}={value}" for key, value in stats.items())


if __name__ == "__main__":
    sys.exit(main())
