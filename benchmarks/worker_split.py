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
queue writer) and of the helper, read from /proc by `_harness.measure` as compare.py
does (with the helper draining, until the events were delivered), and how many times per
1,000 requests the worker's main thread blocked (`waits/kreq`, its voluntary context
switches: a saturated bare worker never blocks, so these are the waits for the GIL that
the writer thread holds, each a sleep and a wake-up), medians over the rounds. The
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
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import LoadSpec, checkout_env, measure  # noqa: E402

# name -> (bench_app mode, flusher, extra environment)
CONFIGS: Dict[str, Tuple[str, str, Dict[str, str]]] = {
    "bare": ("bare", "embedded", {}),
    "ours, capture only": ("ours", "external", {"BENCH_NORECORD": "1"}),
    "ours, nothing written": ("ours", "external", {"BENCH_NOWRITE": "1"}),
    "ours, no flusher": ("ours", "external", {}),
    "ours (helper draining)": ("ours", "embedded", {}),
}


def run_config(config: Tuple[str, str, Dict[str, str]], endpoint: str, seconds: int,
               workdir: str, seq: int) -> Dict[str, float]:
    """One measured load (`_harness.measure`): CPU µs per request by role, and req/s.
    With the helper draining, the CPU counts until the events were delivered."""
    mode, flusher, extra = config
    spec = LoadSpec(endpoint, seconds, 32, warmup=2, flusher=flusher, extra_env=extra,
                    wait_delivery=mode == "ours" and flusher == "embedded")
    run = measure(mode, sys.executable, spec, workdir, seq)
    return dict(run.cpu_us, **{"req/s": run.wrk.requests_per_s, "waits/kreq": run.main_waits * 1000})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--endpoint", default="/hello", choices=["/hello", "/echo"])
    parser.add_argument("--against", help="another checkout of this package: A/B instead of the split")
    args = parser.parse_args()
    configs = CONFIGS
    if args.against:
        other = checkout_env(args.against)
        configs = {"bare": CONFIGS["bare"], "ours (helper draining)": CONFIGS["ours (helper draining)"],
                   "other (helper draining)": ("ours", "embedded", other)}
    workdir = tempfile.mkdtemp(prefix="moesif-split-")
    runs: Dict[str, List[Dict[str, float]]] = {name: [] for name in configs}
    seq = 0  # numbers each run's files in the work directory
    try:
        for round_no in range(args.rounds):
            for name, config in configs.items():
                seq += 1
                m = run_config(config, args.endpoint, args.seconds, workdir, seq)
                runs[name].append(m)
                print(f"round {round_no + 1} {name:24s} " + "  ".join(f"{k} {v:.0f}" for k, v in sorted(m.items())),
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    keys = ["req/s", "main", "writer", "helper", "waits/kreq"]
    print(f"\n{args.endpoint}, medians of {args.rounds} rounds of {args.seconds} s; CPU in µs per request")
    print(f"{'configuration':24s} " + " ".join(f"{k:>8s}" for k in keys) + f" {'+main':>7s}")
    bare_main = statistics.median(m.get("main", 0.0) for m in runs["bare"])
    for name, measured in runs.items():
        med = {k: statistics.median(m.get(k, 0.0) for m in measured) for k in keys}
        print(f"{name:24s} " + " ".join(f"{med[k]:8.0f}" for k in keys) + f" {med['main'] - bare_main:+7.0f}")


if __name__ == "__main__":
    main()
