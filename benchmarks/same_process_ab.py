"""A/B inside one worker process: windows of A and B alternate, switched by SIGUSR1.

    python benchmarks/same_process_ab.py --toggle nowrite --windows 8 --seconds 3
    python benchmarks/same_process_ab.py --toggle commit-interval:0.025

Comparing two processes on this virtual machine mixes the change with the process:
the same code runs at 270 µs per request in one start and 380 in the next, and the
machine's speed drifts within minutes. Here one worker (ours as deployed under
uvicorn[standard], `/hello`, the bench app's callbacks, `wrk -c32`) serves every window;
`bench_app.py` switches one thing on SIGUSR1 (`BENCH_TOGGLE`), and each B window is
compared with the A window just before it. What can be switched:

- `nowrite`: B builds, masks and encodes every event as A does but writes nothing
  (`submit` stubbed out): what writing the queue costs the worker's main thread;
- `commit-interval:<seconds>`: B groups the writer's commits over that window
  instead of the default 10 ms.

It prints, per window, the main thread's and the writer thread's CPU per request, the
main thread's waits per 1,000 requests (see `_harness.main_thread_waits`) and req/s,
then the medians and the median of the paired differences (B minus the A before it).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import worker_pids, workers_waits, cpu_snapshot  # noqa: E402
from _servers import AppServer, Collector  # noqa: E402
from _wrk import run_wrk  # noqa: E402

KEYS = ("main", "writer", "waits/kreq", "req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toggle", required=True, help="nowrite | commit-interval:<seconds>")
    parser.add_argument("--windows", type=int, default=8, help="pairs of windows (A then B)")
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    if args.toggle != "nowrite" and not args.toggle.startswith("commit-interval:"):
        raise SystemExit(f"unknown --toggle {args.toggle!r}: nowrite or commit-interval:<seconds>")
    workdir = tempfile.mkdtemp(prefix="moesif-same-process-")
    collector = Collector()
    env = {"MOESIF_QUEUE_PATH": os.path.join(workdir, "queue.sqlite"), "MOESIF_FLUSHER": "embedded",
           "MOESIF_BASE_URI": collector.url, "BENCH_CALLBACKS": "1", "BENCH_TOGGLE": args.toggle}
    server = AppServer(sys.executable, "ours", env, log_path=os.path.join(workdir, "server.log"))
    windows: Dict[str, List[Dict[str, float]]] = {"A": [], "B": []}
    try:
        url = server.url + "/hello"
        run_wrk(url, seconds=2, connections=32)   # warm-up
        (worker,) = worker_pids(server)
        for pair in range(args.windows):
            for side in ("A", "B"):
                before, waits_before = cpu_snapshot(server, None), workers_waits(server)
                result = run_wrk(url, seconds=args.seconds, connections=32)
                after, waits_after = cpu_snapshot(server, None), workers_waits(server)
                n = max(result.requests, 1)
                row = {"main": (after["main"] - before["main"]) * 1e6 / n,
                       "writer": (after["writer"] - before["writer"]) * 1e6 / n,
                       "waits/kreq": (waits_after - waits_before) * 1000 / n, "req/s": result.requests_per_s}
                windows[side].append(row)
                print(f"pair {pair + 1} {side}: " + "  ".join(f"{k} {row[k]:.0f}" for k in KEYS), flush=True)
                os.kill(worker, signal.SIGUSR1)   # the next window runs the other side
    finally:
        server.stop()
        collector.stop()
    print(f"\n/hello, {args.windows} pairs of {args.seconds} s windows in one worker; A: as shipped, B: {args.toggle}")
    print(f"{'':10s}" + "".join(f"{k:>12s}" for k in KEYS))
    for side in ("A", "B"):
        print(f"{'median ' + side:10s}" + "".join(f"{statistics.median(w[k] for w in windows[side]):12.0f}" for k in KEYS))
    paired = {k: statistics.median(b[k] - a[k] for a, b in zip(windows["A"], windows["B"])) for k in KEYS}
    print(f"{'B - A':10s}" + "".join(f"{paired[k]:+12.0f}" for k in KEYS) + "   (median of the paired differences)")


if __name__ == "__main__":
    main()
