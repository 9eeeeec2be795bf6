"""Where the worker's added CPU goes under uvicorn: recording vs writing vs the helper.

    python benchmarks/worker_split.py --rounds 4 --seconds 5 --endpoint /hello

Serves `bench_app.py` under uvicorn[standard] (one worker, `wrk -t1 -c32`) in five
configurations, alternating within each round: the bare app; ours with the recording
stubbed out (`BENCH_NORECORD=1`, no flusher: the capture alone, the `Exchange` and the
wrapped `receive` and `send`); ours with the queue
writer's `submit` stubbed out and no flusher (`BENCH_NOWRITE=1`, `MOESIF_FLUSHER=external`:
capture, callbacks and the event, nothing written); ours writing but with no flusher;
ours as deployed (the embedded helper draining to the loopback stand-in). For each it
prints requests/s and the CPU per request of each of the worker's threads (main, the
queue writer) and of the helper, read from /proc, medians over the rounds. The
differences between the rows split the middleware's cost into what the request path
does, what writing the queue adds (on the writer thread and, through the GIL, on the
main thread) and what draining adds.

With `--against <checkout>`, the rows are the bare app, ours as deployed and the other
checkout's package as deployed (its package ahead on PYTHONPATH, helper included),
alternating: an A/B of a change on a machine whose speed drifts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import ECHO_BODY  # noqa: E402
from _servers import AppServer, Collector  # noqa: E402
from _wrk import run_wrk  # noqa: E402

CONFIGS: Dict[str, Dict[str, str]] = {
    "bare": {},
    "ours, capture only": {"BENCH_NORECORD": "1", "MOESIF_FLUSHER": "external"},
    "ours, nothing written": {"BENCH_NOWRITE": "1", "MOESIF_FLUSHER": "external"},
    "ours, no flusher": {"MOESIF_FLUSHER": "external"},
    "ours (helper draining)": {},
}


def _cpu_by_thread(pid: int) -> Dict[str, float]:
    """CPU seconds of each thread of `pid`, summed by thread name (/proc comm)."""
    out: Dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        name = "main" if tid == str(pid) else ("writer" if name.startswith("moesifasgi-queu") else "other")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, config: Dict[str, str], collector: Collector, endpoint: str, seconds: int) -> Dict[str, float]:
    workdir = tempfile.mkdtemp(prefix="moesif-split-")
    env = dict(config, BENCH_CALLBACKS="1", MOESIF_BASE_URI=collector.url,
               MOESIF_QUEUE_PATH=os.path.join(workdir, "q.sqlite"))
    server = AppServer(sys.executable, "bare" if name == "bare" else "ours", env)
    try:
        body = ECHO_BODY if endpoint == "/echo" else None
        run_wrk(server.url + endpoint, seconds=2, connections=32, post_json=body)  # warm-up
        workers = server.worker_pids()  # none under uvicorn with one worker: the server is the worker
        worker = workers[0] if workers else server.proc.pid
        helpers = server.helper_pids()
        before, helper_before = _cpu_by_thread(worker), sum(_process_cpu(p) for p in helpers)
        result = run_wrk(server.url + endpoint, seconds=seconds, connections=32, post_json=body)
        after, helper_after = _cpu_by_thread(worker), sum(_process_cpu(p) for p in helpers)
        per = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / result.requests * 1e6 for k in after}
        per["helper"] = (helper_after - helper_before) / result.requests * 1e6
        per["req/s"] = result.requests_per_s
        return per
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--endpoint", default="/hello", choices=["/hello", "/echo"])
    parser.add_argument("--against", help="another checkout of this package: A/B instead of the split")
    args = parser.parse_args()
    configs = CONFIGS
    if args.against:
        here = os.path.dirname(os.path.abspath(__file__))
        other = {"PYTHONPATH": os.pathsep.join([os.path.abspath(args.against), here])}
        configs = {"bare": {}, "ours (helper draining)": {}, "other (helper draining)": other}
    collector = Collector()
    runs: Dict[str, List[Dict[str, float]]] = {name: [] for name in configs}
    try:
        for round_no in range(args.rounds):
            for name, config in configs.items():
                m = measure(name, config, collector, args.endpoint, args.seconds)
                runs[name].append(m)
                print(f"round {round_no + 1} {name:24s} " + "  ".join(f"{k} {v:.0f}" for k, v in sorted(m.items())),
                      flush=True)
    finally:
        collector.stop()
    keys = ["req/s", "main", "writer", "helper"]
    print(f"\n{args.endpoint}, medians of {args.rounds} rounds of {args.seconds} s; CPU in µs per request")
    print(f"{'configuration':24s} " + " ".join(f"{k:>8s}" for k in keys) + f" {'+main':>7s}")
    bare_main = statistics.median(m.get("main", 0.0) for m in runs["bare"])
    for name, measured in runs.items():
        med = {k: statistics.median(m.get(k, 0.0) for m in measured) for k in keys}
        print(f"{name:24s} " + " ".join(f"{med[k]:8.0f}" for k in keys) + f" {med['main'] - bare_main:+7.0f}")


if __name__ == "__main__":
    main()
