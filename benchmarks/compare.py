"""This package against the original `moesifasgi` 1.1.8 and the bare app, in one run.

    python benchmarks/compare.py            # full run, about 10 minutes
    python benchmarks/compare.py --quick    # about 2 minutes: fewer endpoints, one short round
    python benchmarks/compare.py --no-original

For uvicorn with 1 worker and gunicorn with 4 uvicorn workers, serves
`bench_app.py` bare, with ours and with the original (from its own venv,
`bench-results/original-venv`, created on first use by `original_env.py`), and loads
/json, /echo (1 KB JSON POST) and /stream with wrk, alternating the three within
each round. Prints req/s, p50/p99 and ratios (median over rounds). After each
loaded run it counts the distinct events the loopback collector received (its
`--record-raw` file, decoded after the load), how long after the load the last one arrived, and the peak RSS
of the app processes during load and delivery. Then it runs the drain benchmark
and, when present, the outgoing-call overhead benchmark. A copy of the report
goes to bench-results/compare-<time>.txt.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _events import RawRecordReader, count_ids  # noqa: E402
from _servers import ROOT, AppServer, Collector  # noqa: E402
from _wrk import WrkResult, run_wrk  # noqa: E402
from http_overhead import ECHO_BODY  # noqa: E402


@dataclass
class Run:
    wrk: WrkResult
    expected: int = 0        # responses wrk counted (warm-up included)
    delivered: int = 0       # distinct transaction ids the collector received
    duplicates: int = 0
    delivery_s: float = 0.0  # end of load -> last event received
    complete: bool = True    # all expected arrived before the wait ended
    peak_rss_mb: float = 0.0


def machine_info() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


class _RssSampler(threading.Thread):
    def __init__(self, server: AppServer) -> None:
        super().__init__(daemon=True)
        self.server, self.peak_kb, self._halt = server, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_kb = max(self.peak_kb, self.server.rss_kb())
            self._halt.wait(0.25)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak_kb


def measure(mode: str, python: str, server_kind: str, workers: int, endpoint: str, args,
            workdir: str, seq: int) -> Run:
    record = os.path.join(workdir, f"events-{seq}.raw") if mode != "bare" else None
    # Undecoded during the load: the stand-in's own CPU (Moesif's, in production)
    # must not be charged to the package that sends it more events.
    collector = Collector(raw_record=record) if record else None
    env = {"MOESIF_QUEUE_PATH": os.path.join(workdir, f"queue-{seq}.sqlite"), "MOESIF_FLUSHER": "embedded",
           "MOESIF_BASE_URI": collector.url if collector else "http://127.0.0.1:9"}
    server = AppServer(python, mode, env, workers=workers, server=server_kind)
    sampler = _RssSampler(server)
    sampler.start()
    try:
        url = server.url + endpoint
        post = ECHO_BODY if endpoint == "/echo" else None
        warm = run_wrk(url, seconds=1, connections=args.connections, post_json=post)
        result = run_wrk(url, seconds=args.seconds, connections=args.connections, post_json=post)
        run = Run(result, expected=warm.requests + result.requests)
        if record:
            _wait_delivery(run, record, mode, args)
    finally:
        run_peak = sampler.stop()
        server.stop()
        if collector:
            collector.stop()
    run.peak_rss_mb = run_peak / 1024
    return run


def _wait_delivery(run: Run, record: str, mode: str, args) -> None:
    ended = time.monotonic()
    timeout = args.deliver_timeout if mode == "ours" else args.original_deliver_timeout
    last, last_at = -1, ended
    reader = RawRecordReader(record)
    while time.monotonic() - ended < timeout:
        count = reader.poll()
        if count != last:
            last, last_at = count, time.monotonic()
        if count >= run.expected:
            break
        if time.monotonic() - last_at > args.quiet:
            break
        time.sleep(0.1)
    reader.poll()
    seen, dups = count_ids(reader.events)
    run.delivered, run.duplicates = len(seen), dups
    run.delivery_s = last_at - ended
    run.complete = run.delivered >= run.expected


def _median(runs: List[Run], attr: str) -> float:
    return statistics.median(getattr(r.wrk, attr) for r in runs)


def report_config(title: str, results: Dict[str, Dict[str, List[Run]]], out) -> None:
    out(f"\n## {title}")
    out(f"{'endpoint':8s} {'mode':9s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} {'vs bare':>8s} {'errors':>6s}   "
        f"{'expected':>8s} {'delivered':>9s} {'dup':>4s} {'delivery s':>10s} {'peak RSS MB':>11s}")
    for endpoint, by_mode in results.items():
        bare = _median(by_mode["bare"], "requests_per_s")
        for mode, runs in by_mode.items():
            rps = _median(runs, "requests_per_s")
            errors = sum(r.wrk.errors for r in runs)
            last = runs[-1]
            deliv = "" if mode == "bare" else (
                f"{last.expected:8d} {last.delivered:9d} {last.duplicates:4d} "
                f"{last.delivery_s:9.1f}{'' if last.complete else '+'}")
            deliv = deliv or f"{'':8s} {'':9s} {'':4s} {'':10s}"
            out(f"{endpoint:8s} {mode:9s} {rps:8.0f} {_median(runs, 'p50_ms'):7.2f} {_median(runs, 'p99_ms'):7.2f} "
                f"{rps / bare:8.1%} {errors:6d}   {deliv} {max(r.peak_rss_mb for r in runs):11.1f}")
        if "original" in by_mode:
            ratio = _median(by_mode["ours"], "requests_per_s") / _median(by_mode["original"], "requests_per_s")
            out(f"{endpoint:8s} ours/original throughput: {ratio:.2f}x")
    out("(delivery columns: last round; '+' = still incomplete when the wait ended; "
        "peak RSS: sum over the server and its workers, max over rounds)")


def run_script(cmd: List[str], out, timeout: float) -> None:
    out("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        text = proc.stdout.strip() or proc.stderr.strip()[-2000:]
    except subprocess.TimeoutExpired:
        text = f"(timed out after {timeout:.0f} s)"
    for line in text.splitlines():
        if " round " in line:  # per-round lines of outgoing_overhead: the tables follow
            continue
        out(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 2 minutes: /json and /echo, 1 round of 2 s")
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--endpoints", nargs="*", choices=["/json", "/echo", "/stream"])
    parser.add_argument("--no-original", action="store_true")
    parser.add_argument("--original-python", help="python with moesifasgi 1.1.8 (default: bench-results/original-venv)")
    parser.add_argument("--drain-events", type=int)
    args = parser.parse_args()
    q = args.quick
    args.seconds = args.seconds or (2 if q else 5)
    args.rounds = args.rounds or (1 if q else 2)
    args.endpoints = args.endpoints or (["/json", "/echo"] if q else ["/json", "/echo", "/stream"])
    args.drain_events = args.drain_events or (20_000 if q else 200_000)
    args.deliver_timeout, args.original_deliver_timeout = (10.0, 3.0) if q else (30.0, 8.0)
    args.quiet = 3.0

    os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
    report_path = os.path.join(ROOT, "bench-results", time.strftime("compare-%Y%m%d-%H%M%S.txt"))
    report = open(report_path, "w")

    def out(line: str = "") -> None:
        print(line, flush=True)
        report.write(line + "\n")

    modes: Dict[str, str] = {"bare": sys.executable, "ours": sys.executable}
    if not args.no_original:
        if args.original_python:
            modes["original"] = args.original_python
        else:
            from original_env import original_python
            modes["original"] = original_python()
    started = time.monotonic()
    out(f"machine: {machine_info()}")
    out(f"wrk 1 thread, {args.connections} connections, {args.seconds} s per run (+1 s warm-up), "
        f"{args.rounds} round(s), modes alternate within a round; collector: loopback, own process")
    configs: List[Tuple[str, str, int]] = [("uvicorn, 1 worker", "uvicorn", 1),
                                           ("gunicorn, 4 uvicorn workers", "gunicorn", 4)]
    seq = 0
    with tempfile.TemporaryDirectory(prefix="moesif-compare-") as workdir:
        for title, kind, workers in configs:
            results: Dict[str, Dict[str, List[Run]]] = {e: {m: [] for m in modes} for e in args.endpoints}
            for round_no in range(args.rounds):
                for endpoint in args.endpoints:
                    for mode, python in modes.items():
                        seq += 1
                        r = measure(mode, python, kind, workers, endpoint, args, workdir, seq)
                        results[endpoint][mode].append(r)
                        print(f"  {kind} x{workers} round {round_no + 1} {endpoint:7s} {mode:9s} "
                              f"{r.wrk.requests_per_s:8.0f} req/s p99 {r.wrk.p99_ms:6.2f} ms "
                              f"delivered {r.delivered}/{r.expected} in {r.delivery_s:.1f} s "
                              f"rss {r.peak_rss_mb:.0f} MB", flush=True)
            report_config(title, results, out)
    out("\n## Drain of a backlog (ours; the original sends at most BATCH_SIZE 100 per second per process)")
    run_script([sys.executable, os.path.join(HERE, "drain_benchmark.py"), "--events", str(args.drain_events)],
               out, timeout=300)
    outgoing = os.path.join(HERE, "outgoing_overhead.py")
    if os.path.exists(outgoing):
        out("\n## Outgoing-call overhead (ours)")
        extra = ["--calls", "500", "--rounds", "3"] if q else ["--calls", "2000", "--rounds", "3"]
        run_script([sys.executable, outgoing] + extra, out, timeout=300)
    out(f"\ntotal time {time.monotonic() - started:.0f} s; report saved to {os.path.relpath(report_path, ROOT)}")
    report.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
