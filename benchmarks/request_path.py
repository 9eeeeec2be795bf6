"""CPU the middleware adds per call on the worker, in-process: no server, no socket.

    python benchmarks/request_path.py                         # this checkout
    python benchmarks/request_path.py --against /path/to/other/checkout --rounds 5

Drives `MoesifMiddleware` around a minimal ASGI app (`/hello`: a 5-byte text
response; `/echo`: a 1 KB JSON body echoed) on uvloop, with the bench app's SKIP
(reads `request.url.path`) and IDENTIFY_USER (reads a header) callbacks and LOG_BODY
on, the flusher external (nothing drains). Prints the main thread's CPU time per call
above the bare app's, and the queue writer thread's CPU time per call (SQLite's
work included), each the median of the rounds. With --against, each round runs the
other checkout's package too, in its own process, alternating, so that a busy
machine weighs on both alike. With --capture-only, recording is stubbed out (the
event is neither built nor queued): what the capture itself costs, the `Exchange`
and the wrapped `receive` and `send`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from _harness import checkout_root  # the script's directory is on sys.path

ECHO = json.dumps({"user": "ann", "items": [{"sku": f"SKU-{i}", "qty": i, "note": "x" * 40}
                                             for i in range(12)]}).encode()


def _child(calls: int, capture_only: bool = False) -> Dict[str, float]:
    """One measurement in this process: {"<endpoint> main": µs, "<endpoint> writer": µs}."""
    import uvloop

    from moesifasgi import MoesifMiddleware

    async def hello(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5"), (b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"hello"})

    async def echo(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    def skip(request, response):
        return request.url.path == "/health"

    def identify_user(request, response):
        return request.headers.get("x-user-id")

    def scope_for(path: str, method: str, body: bool) -> dict:
        headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
        if body:
            headers += [(b"content-length", str(len(ECHO)).encode()), (b"content-type", b"application/json")]
        return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
                "method": method, "root_path": "", "path": path, "raw_path": path.encode(),
                "query_string": b"", "headers": headers, "state": {}}

    async def drive(app, scope: dict, body: bool, n: int) -> float:
        async def send(message):
            pass

        request = {"type": "http.request", "body": ECHO if body else b"", "more_body": False}

        async def receive():
            return request

        started = time.thread_time()
        for _ in range(n):
            await app(dict(scope), receive, send)
        return (time.thread_time() - started) / n * 1e6

    from _harness import stat_cpu

    def thread_cpu(tid: int) -> float:
        return stat_cpu(f"/proc/self/task/{tid}/stat")

    result: Dict[str, float] = {}
    workdir = tempfile.mkdtemp(prefix="moesif-request-path-")
    for name, inner, method, body in (("/hello", hello, "GET", False), ("/echo", echo, "POST", True)):
        queue = os.path.join(workdir, name.strip("/") + ".sqlite")
        app = MoesifMiddleware(inner, settings={
            "APPLICATION_ID": "bench", "QUEUE_PATH": queue, "FLUSHER": "external", "LOG_BODY": True,
            "SKIP": skip, "IDENTIFY_USER": identify_user})
        scope = scope_for(name, method, body)
        if capture_only:
            async def finish(exchange, strict=None):
                exchange.recorded = True

            app._finish = finish

        async def run() -> tuple:
            await drive(app, scope, body, 1000)  # warm-up: the writer thread starts
            writer = app.pipeline.writer
            writer.flush(10)
            tid = writer._thread.native_id
            before = thread_cpu(tid)
            bare = await drive(inner, scope, body, calls)
            ours = await drive(app, scope, body, calls)
            writer.flush(10)
            return bare, ours, (thread_cpu(tid) - before) / calls * 1e6

        bare, ours, writer_us = uvloop.run(run())
        result[f"{name} main"] = ours - bare
        result[f"{name} writer"] = writer_us
    return result


def _measure(python: str, checkout: str, calls: int, capture_only: bool = False) -> Dict[str, float]:
    env = dict(os.environ, PYTHONPATH=checkout)
    command = [python, os.path.abspath(__file__), "--child", str(calls)] + (["--capture-only"] if capture_only else [])
    out = subprocess.run(command, env=env, cwd="/",
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--against", help="another checkout of this package, measured alternately")
    parser.add_argument("--capture-only", action="store_true", help="stub recording out: the capture's own cost")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.capture_only)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checkouts = {"this checkout": here}
    if args.against:
        checkouts = {"other": checkout_root(args.against), "this checkout": here}
    runs: Dict[str, List[Dict[str, float]]] = {name: [] for name in checkouts}
    for round_no in range(args.rounds):
        for name, path in checkouts.items():
            measured = _measure(sys.executable, path, args.calls, args.capture_only)
            runs[name].append(measured)
            print(f"round {round_no + 1} {name:13s} " + "  ".join(f"{k} {v:6.1f}" for k, v in measured.items()),
                  flush=True)
    print(f"\nµs of CPU per call added by the middleware, medians of {args.rounds} rounds of {args.calls} calls "
          "(main: the event loop's thread, above the bare app; writer: the queue writer thread), and their minimums")
    keys = list(runs[next(iter(runs))][0])
    print(f"{'checkout':20s} " + " ".join(f"{k:>14s}" for k in keys) + f" {'/hello total':>13s} {'/echo total':>12s}")
    for label, pick in (("median", statistics.median), ("min", min)):
        # The least disturbed round (min) is the steadier figure on a shared machine:
        # other jobs only ever add CPU time to a round, through caches and frequency.
        for name, measured in runs.items():
            med = {k: pick(m[k] for m in measured) for k in keys}
            print(f"{name + ' ' + label:20s} " + " ".join(f"{med[k]:14.1f}" for k in keys)
                  + f" {med['/hello main'] + med['/hello writer']:13.1f} {med['/echo main'] + med['/echo writer']:12.1f}")


if __name__ == "__main__":
    main()
