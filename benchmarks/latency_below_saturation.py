"""Latency the middleware adds per request at a load the app can take (no queueing).

    python benchmarks/latency_below_saturation.py --rounds 3 --seconds 10

`compare.py` drives the app with `wrk -c32` as fast as it answers: there the p99
is mostly waiting in line, and the app that serves fewer requests per second
shows the longer line whatever each request costs. Here each of `--connections`
wrk connections waits `--think-ms` before each request (wrk's `delay()`), which
keeps the app well below saturation in every mode: bare; ours as deployed (the
embedded helper draining to the loopback stand-in); ours without a flusher (what the
worker alone adds, apart from the helper competing for the cores). The modes
alternate within each round, and the medians over the rounds of wrk's p50, p90 and
p99 are printed with what each adds to bare's.
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

from _harness import LoadSpec, measure  # noqa: E402

# What each row runs: the bench app's mode and the flusher.
MODES: Dict[str, Tuple[str, str]] = {
    "bare": ("bare", "embedded"),
    "ours": ("ours", "embedded"),
    # No helper on the box: what the worker alone adds, apart from the helper's
    # draining competing with it for the two cores.
    "ours, no flusher": ("ours", "external"),
}


def run_mode(name: str, args: argparse.Namespace, workdir: str, seq: int) -> Dict[str, float]:
    """One load through `_harness.measure`, each connection thinking `--think-ms`."""
    mode, flusher = MODES[name]
    spec = LoadSpec(args.endpoint, args.seconds, args.connections, warmup=2, flusher=flusher,
                    think_ms=args.think_ms, wait_delivery=False)
    r = measure(mode, sys.executable, spec, workdir, seq).wrk
    return {"req/s": r.requests_per_s, "p50": r.p50_ms, "p90": r.p90_ms, "p99": r.p99_ms, "errors": r.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--think-ms", type=float, default=8.0)
    parser.add_argument("--endpoint", default="/hello", choices=["/hello", "/echo"])
    parser.add_argument("--modes", nargs="*", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()
    runs: Dict[str, List[Dict[str, float]]] = {name: [] for name in ["bare"] + [m for m in args.modes if m != "bare"]}
    workdir = tempfile.mkdtemp(prefix="moesif-latency-")
    seq = 0  # numbers each run's files in the work directory
    try:
        for round_no in range(args.rounds):
            for mode in runs:
                seq += 1
                m = run_mode(mode, args, workdir, seq)
                runs[mode].append(m)
                print(f"round {round_no + 1} {mode:16s} " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    keys = ["req/s", "p50", "p90", "p99"]
    med = {mode: {k: statistics.median(m[k] for m in measured) for k in keys} for mode, measured in runs.items()}
    print(f"\n{args.endpoint}, {args.connections} connections each waiting {args.think_ms:g} ms before each "
          f"request, medians of {args.rounds} rounds of {args.seconds} s; latency in ms")
    print(f"{'mode':16s} " + " ".join(f"{k:>8s}" for k in keys) + "   added: " + " ".join(f"{k:>7s}" for k in keys[1:]))
    for mode in runs:
        added = " ".join(f"{med[mode][k] - med['bare'][k]:+7.3f}" for k in keys[1:])
        print(f"{mode:16s} " + " ".join(f"{med[mode][k]:8.3f}" for k in keys) + f"          {added}")


if __name__ == "__main__":
    main()
