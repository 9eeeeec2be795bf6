"""Time per outgoing call (requests and httpx) with outgoing capture off and on.

    python benchmarks/outgoing_overhead.py                    # 2000 calls x 5 rounds per client
    python benchmarks/outgoing_overhead.py --calls 5000 --rounds 7

The target is a keep-alive HTTP/1.1 server on 127.0.0.1 in its own process (so it
never shares our GIL); the queue writer thread does its real work (SQLite WAL
commits) in this process, as it would in an app. Rounds alternate off/on so that
drift on a shared machine hits both; each figure is the median over the rounds.
Goal: capture adds under 10% per call, or under 100 µs.

A second table times the same clients against in-process fakes (httpx's
MockTransport, a canned requests adapter): no network, so the difference is the
capture's own CPU cost on the caller's thread, without the noise of loopback I/O.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _servers import free_port, wait_for_port  # noqa: E402

JSON_BODY = json.dumps({"id": 7, "name": "widget", "tags": ["a", "b", "c"], "price": 12.5}).encode()
POST_BODY = {"user": "ann", "items": [{"sku": f"SKU-{i}", "qty": i} for i in range(8)]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle and the
    # client's delayed ACK add 40 ms to every keep-alive call.
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(JSON_BODY)

    def do_POST(self) -> None:
        self._reply(self.rfile.read(int(self.headers.get("Content-Length") or 0)))


def serve(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), _Handler).serve_forever()


def timed(call: Callable[[], object]) -> Callable[[int], float]:
    """A runner for `call`: run(n) makes n calls and returns the seconds taken."""
    def run(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            call()
        return time.perf_counter() - started
    return run


def clients(url: str) -> Dict[str, Callable[[int], float]]:
    """name -> run(n calls) -> seconds taken."""
    import httpx
    import requests

    session = requests.Session()
    sync_client = httpx.Client()

    def async_run(n: int) -> float:
        async def go() -> float:
            async with httpx.AsyncClient() as client:
                await client.get(url + "/json")  # connect outside the timing
                started = time.perf_counter()
                for _ in range(n):
                    await client.get(url + "/json")
                return time.perf_counter() - started
        return asyncio.run(go())

    return {
        "requests GET": timed(lambda: session.get(url + "/json").json()),
        "requests POST json": timed(lambda: session.post(url + "/echo", json=POST_BODY).json()),
        "httpx.Client GET": timed(lambda: sync_client.get(url + "/json").json()),
        "httpx.AsyncClient GET": async_run,
    }


def in_process_clients() -> Dict[str, Callable[[int], float]]:
    import httpx
    import requests
    from requests.adapters import BaseAdapter

    headers = {"Content-Type": "application/json", "Server": "fake", "Date": "Tue, 24 Nov 2026 01:49:51 GMT"}

    class CannedAdapter(BaseAdapter):
        def send(self, request: object, **kwargs: object) -> requests.Response:
            response = requests.Response()
            response.status_code, response.url, response.request = 200, request.url, request  # type: ignore[attr-defined]
            response.headers = requests.structures.CaseInsensitiveDict(headers)
            response.raw, response.connection = BytesIO(JSON_BODY), self
            return response

        def close(self) -> None:
            pass

    session = requests.Session()
    session.mount("http://", CannedAdapter())
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, headers=headers, content=JSON_BODY)))

    return {
        "requests GET (fake)": timed(lambda: session.get("http://fake.test/json").json()),
        "httpx.Client GET (fake)": timed(lambda: client.get("http://fake.test/json").json()),
    }


def measure(runs: Dict[str, Callable[[int], float]], settings: object, calls: int, rounds: int) -> Dict[str, Dict[str, List[float]]]:
    from moesifasgi import outgoing, writers

    results: Dict[str, Dict[str, List[float]]] = {name: {"off": [], "on": []} for name in runs}
    for name, run in runs.items():
        outgoing.uninstall()
        run(200)  # warm up: connections, imports, caches
        for round_no in range(rounds):
            for mode in ("off", "on"):
                if mode == "on":
                    outgoing.install(settings)  # type: ignore[arg-type]
                else:
                    outgoing.uninstall()
                writers.flush_all()
                per_call = run(calls) / calls * 1e6
                results[name][mode].append(per_call)
                print(f"{name:24s} round {round_no + 1} {mode:3s} {per_call:8.1f} µs/call", flush=True)
    outgoing.uninstall()
    writers.flush_all()
    return results


def report(title: str, results: Dict[str, Dict[str, List[float]]]) -> None:
    print(f"\n{title}")
    print(f"{'client':24s} {'off µs':>9s} {'on µs':>9s} {'added µs':>9s} {'added %':>8s}")
    for name, modes in results.items():
        off, on = statistics.median(modes["off"]), statistics.median(modes["on"])
        print(f"{name:24s} {off:9.1f} {on:9.1f} {on - off:9.1f} {(on - off) / off:8.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    from moesifasgi.settings import parse_settings

    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(port)])
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as queue_dir:
            queue_path = os.path.join(queue_dir, "queue.sqlite")
            settings = parse_settings({"APPLICATION_ID": "bench", "QUEUE_PATH": queue_path,
                                       "BASE_URI": "http://127.0.0.1:9"})
            results = measure(clients(url), settings, args.calls, args.rounds)
            fakes = measure(in_process_clients(), settings, args.calls, args.rounds)
            conn = sqlite3.connect(queue_path)
            recorded = conn.execute("SELECT COALESCE(SUM(event_count), 0) FROM events").fetchone()[0]  # rows are segments
            conn.close()
    finally:
        server.terminate()
        server.wait(10)

    report(f"{args.calls} calls x {args.rounds} rounds per client, loopback target (medians)", results)
    report("the same, in-process fakes: the capture's own CPU cost per call", fakes)
    # (the async client makes one more call per round, to connect outside the timing)
    expected = (len(results) + len(fakes)) * args.rounds * args.calls + args.rounds
    print(f"events recorded: {recorded} (expected {expected})")


if __name__ == "__main__":
    main()
