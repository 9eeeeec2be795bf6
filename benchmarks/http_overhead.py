"""Throughput and latency of the same FastAPI app with and without the middleware.

    python benchmarks/http_overhead.py                 # bare vs ours, 1 uvicorn worker
    python benchmarks/http_overhead.py --seconds 10 --rounds 3 --endpoint /echo

Runs alternate (bare, ours, bare, ours, ...) so that drift on a shared machine
hits both; each figure printed is the median over the rounds. A loopback Moesif
collector runs in its own process and receives what the flusher sends (stored
undecoded, so that it costs the machine next to nothing).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _servers import AppServer, Collector  # noqa: E402
from _wrk import WrkResult, run_wrk  # noqa: E402

ECHO_BODY = {"user": "ann", "items": [{"sku": f"SKU-{i}", "qty": i, "note": "x" * 40} for i in range(12)]}


def measure(mode: str, python: str, args, collector: Collector, queue_dir: str) -> WrkResult:
    env = {"MOESIF_BASE_URI": collector.url, "MOESIF_QUEUE_PATH": os.path.join(queue_dir, f"{mode}.sqlite")}
    if args.durability:
        env["MOESIF_DURABILITY"] = args.durability
    # embedded: the worker also drains to the collector during the load;
    # external: the worker only captures (what a separate moesif-flush would drain).
    env["MOESIF_FLUSHER"] = args.flusher
    server = AppServer(python, mode, env, workers=args.workers, server=args.server)
    try:
        url = server.url + args.endpoint
        post = ECHO_BODY if args.endpoint == "/echo" else None
        run_wrk(url, seconds=2, connections=args.connections, post_json=post)  # warm-up
        return run_wrk(url, seconds=args.seconds, connections=args.connections, post_json=post)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=["uvicorn", "gunicorn"], default="uvicorn")
    parser.add_argument("--endpoint", default="/json", choices=["/json", "/echo", "/stream"])
    parser.add_argument("--durability", choices=["batched", "strict"])
    parser.add_argument("--flusher", choices=["embedded", "in-process", "external"], default="embedded")
    parser.add_argument("--original-python", help="a python with moesifasgi 1.1.8 installed, to add it to the comparison")
    args = parser.parse_args()

    modes = {"bare": sys.executable, "ours": sys.executable}
    if args.original_python:
        modes["original"] = args.original_python
    results: Dict[str, List[WrkResult]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as queue_dir:
        # Posts stored undecoded, as in compare.py: the stand-in's CPU is Moesif's
        # in production and must not be charged to the app under test.
        collector = Collector(raw_record=os.path.join(queue_dir, "posts.raw"))
        try:
            for round_no in range(args.rounds):
                for mode, python in modes.items():
                    r = measure(mode, python, args, collector, queue_dir)
                    results[mode].append(r)
                    print(f"round {round_no + 1} {mode:9s} {r.requests_per_s:9.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
                          f"p99 {r.p99_ms:6.2f} ms  errors {r.errors}", flush=True)
                    time.sleep(0.5)
        finally:
            collector.stop()

    bare_rps = statistics.median(r.requests_per_s for r in results["bare"])
    bare_p99 = statistics.median(r.p99_ms for r in results["bare"])
    print(f"\n{args.endpoint}, {args.workers} {args.server} worker(s), flusher {args.flusher}, {args.connections} connections, "
          f"{args.seconds} s x {args.rounds} rounds (medians)")
    print(f"{'mode':10s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs bare':>8s} {'+p99 ms':>8s}")
    for mode, runs in results.items():
        rps = statistics.median(r.requests_per_s for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        print(f"{mode:10s} {rps:9.0f} {p50:8.2f} {p99:8.2f} {rps / bare_rps:8.1%} {p99 - bare_p99:8.2f}")


if __name__ == "__main__":
    main()
