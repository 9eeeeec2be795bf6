"""Throughput, latency and CPU per request of the same FastAPI app with and without the middleware.

    python benchmarks/http_overhead.py                      # bare vs ours, 1 uvicorn worker, /hello
    python benchmarks/http_overhead.py --seconds 10 --rounds 5 --endpoint /echo
    python benchmarks/http_overhead.py --peers              # apitally and OpenTelemetry too
    python benchmarks/http_overhead.py --flusher external   # capture only, nothing draining

Runs alternate (bare, ours, bare, ours, ...) so that drift on a shared machine hits
every mode alike; each figure is the median over the rounds. Runs under uvicorn with
uvloop and httptools (`uvicorn[standard]`), ours with the bench app's SKIP and
IDENTIFY_USER callbacks and LOG_BODY on (--no-callbacks: without them). CPU per request
is read from /proc for each process and thread (see `_harness.py`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import ECHO_BODY, LoadSpec, Run, measure, require_standard  # noqa: E402,F401 - ECHO_BODY re-exported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=["uvicorn", "gunicorn"], default="uvicorn")
    parser.add_argument("--endpoint", default="/hello", choices=["/hello", "/json", "/echo", "/stream"])
    parser.add_argument("--durability", choices=["batched", "strict"])
    parser.add_argument("--flusher", choices=["embedded", "in-process", "external"], default="embedded")
    parser.add_argument("--no-callbacks", action="store_true")
    parser.add_argument("--peers", action="store_true", help="add apitally and OpenTelemetry's ASGI middleware")
    parser.add_argument("--original-python", help="a python with moesifasgi 1.1.8 installed, to add it to the comparison")
    args = parser.parse_args()

    require_standard(sys.executable)
    modes = {"bare": sys.executable, "ours": sys.executable}
    if args.original_python:
        modes["original"] = args.original_python
    if args.peers:
        modes.update(apitally=sys.executable, otel=sys.executable)
    results: Dict[str, List[Run]] = {m: [] for m in modes}
    spec = LoadSpec(endpoint=args.endpoint, seconds=args.seconds, connections=args.connections, warmup=2,
                    server=args.server, workers=args.workers, callbacks=not args.no_callbacks,
                    flusher=args.flusher, durability=args.durability,
                    wait_delivery=args.flusher != "external")
    seq = 0
    with tempfile.TemporaryDirectory() as workdir:
        for round_no in range(args.rounds):
            for mode, python in modes.items():
                seq += 1
                r = measure(mode, python, spec, workdir, seq)
                results[mode].append(r)
                print(f"round {round_no + 1} {mode:9s} {r.wrk.requests_per_s:9.0f} req/s  p50 {r.wrk.p50_ms:6.2f} ms  "
                      f"p99 {r.wrk.p99_ms:6.2f} ms  worker {r.worker_us:5.0f} µs/req (writer {r.cpu_us['writer']:.0f}) "
                      f"helper {r.cpu_us['helper']:4.0f} µs/req  errors {r.wrk.errors}", flush=True)

    def med(runs: List[Run], get) -> float:
        return statistics.median(get(r) for r in runs)

    bare = results["bare"]
    bare_rps, bare_p99 = med(bare, lambda r: r.wrk.requests_per_s), med(bare, lambda r: r.wrk.p99_ms)
    bare_worker = med(bare, lambda r: r.worker_us)
    print(f"\n{args.endpoint}, {args.workers} {args.server} worker(s), flusher {args.flusher}, "
          f"callbacks {'off' if args.no_callbacks else 'SKIP + IDENTIFY_USER'}, {args.connections} connections, "
          f"{args.seconds} s x {args.rounds} rounds (medians; CPU in µs per request)")
    print(f"{'mode':10s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'vs bare':>8s} {'+p99 ms':>8s} "
          f"{'worker':>7s} {'+worker':>8s} {'writer':>7s} {'helper':>7s} {'wRSS MB':>8s} {'hRSS MB':>8s}  per-round ratio")
    for mode, runs in results.items():
        rps = med(runs, lambda r: r.wrk.requests_per_s)
        p99 = med(runs, lambda r: r.wrk.p99_ms)
        worker = med(runs, lambda r: r.worker_us)
        per_round = " ".join(f"{r.wrk.requests_per_s / b.wrk.requests_per_s:.1%}" for r, b in zip(runs, bare))
        print(f"{mode:10s} {rps:8.0f} {med(runs, lambda r: r.wrk.p50_ms):7.2f} {p99:7.2f} {rps / bare_rps:8.1%} "
              f"{p99 - bare_p99:+8.2f} {worker:7.0f} {worker - bare_worker:+8.0f} "
              f"{med(runs, lambda r: r.cpu_us['writer']):7.0f} {med(runs, lambda r: r.cpu_us['helper']):7.0f} "
              f"{max(r.worker_rss_mb for r in runs):8.1f} {max(r.helper_rss_mb for r in runs):8.1f}  {per_round}")


if __name__ == "__main__":
    main()
