"""Instructions per request in a real uvicorn worker, counted by valgrind's callgrind.

    python benchmarks/instructions.py --seconds 20 --endpoint /hello
    python benchmarks/instructions.py --against <other checkout>
    python benchmarks/instructions.py --options     # what the callbacks and LOG_BODY cost

CPU time per request on this virtual machine moves by up to 30% between rounds of the
same code (the host takes 5–16% of the cores as steal time under load, `vmstat`'s `st`),
so a change of a few percent on the request path cannot be told from noise by timing.
An instruction count can: callgrind counts what the worker executed, whatever else the
machine was doing. It does not see what the instructions cost (cache misses, the GIL
changing hands with the writer thread), so it measures the work a change removes from
the request path, not the time; `worker_split.py` measures the time.

Each configuration serves `bench_app.py` (the SKIP and IDENTIFY_USER callbacks, LOG_BODY
on) under `uvicorn[standard]` inside callgrind with instrumentation off, warms it with
`wrk`, turns counting on for a second `wrk` load and dumps the counts per thread. The
configurations are the ones of `worker_split.py`, except that the flusher never runs in
the worker's process (`MOESIF_FLUSHER=external`): the bare app; ours with the recording
stubbed out (capture only); ours with nothing written (`submit` stubbed out); ours
writing. With `--against`, the rows are bare, ours writing and the other checkout's
package writing. Under callgrind the worker runs some 50 times slower, so a load of
20 s is 500 (`/echo`) to 3,000 (bare `/hello`) requests. Runs of the same configuration
agree within 1%. At that pace nearly every group the writer thread commits holds one
event, so the other threads' count is a whole commit per event: at full speed a group
holds dozens.

With `--options`, the rows are bare and ours writing with the bench configuration, then
without its two callbacks, without LOG_BODY, and without either: how much of what the
middleware adds is the price of the options the benchmarks turn on, and what is left
when a user turns them off.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import ECHO_BODY, HERE, checkout_env  # noqa: E402
from _servers import free_port, stop_group, wait_for_port  # noqa: E402
from _wrk import run_wrk  # noqa: E402

CONFIGS: Dict[str, Tuple[str, Dict[str, str]]] = {
    "bare": ("bare", {}),
    "ours, capture only": ("ours", {"BENCH_NORECORD": "1"}),
    "ours, nothing written": ("ours", {"BENCH_NOWRITE": "1"}),
    "ours, writing": ("ours", {}),
}
OPTIONS: Dict[str, Tuple[str, Dict[str, str]]] = {
    "bare": CONFIGS["bare"],
    "ours, writing": CONFIGS["ours, writing"],
    "ours, no callbacks": ("ours", {"BENCH_NO_CALLBACKS": "1"}),
    "ours, no LOG_BODY": ("ours", {"BENCH_NO_LOG_BODY": "1"}),
    "ours, neither": ("ours", {"BENCH_NO_CALLBACKS": "1", "BENCH_NO_LOG_BODY": "1"}),
}
# Fewer connections than the timing benchmarks: under callgrind a request takes
# tens of milliseconds, and wrk must not time any out.
CONNECTIONS = 8


def require_valgrind() -> None:
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")


def thread_totals(dump_prefix: str) -> Dict[int, int]:
    """Instructions per thread (callgrind numbers the main thread 1) of the first
    explicit dump (`callgrind_control -d`), whose files are `<prefix>.1-<thread>`."""
    totals: Dict[int, int] = {}
    for path in glob.glob(glob.escape(dump_prefix) + ".1-*"):
        with open(path) as f:
            text = f.read()
        thread = re.search(r"^thread:\s*(\d+)", text, re.M)
        total = re.search(r"^(?:totals|summary):\s*(\d+)", text, re.M)
        if thread and total:
            totals[int(thread.group(1))] = int(total.group(1))
    return totals


def count(mode: str, extra: Dict[str, str], endpoint: str, seconds: int, workdir: str, seq: int) -> Dict[str, float]:
    """Instructions per request of the worker's main thread and of its other threads."""
    port = free_port()
    env = dict(os.environ, BENCH_MODE=mode, PYTHONPATH=HERE, BENCH_CALLBACKS="1", MOESIF_FLUSHER="external",
               MOESIF_QUEUE_PATH=os.path.join(workdir, f"queue-{seq}.sqlite"), MOESIF_BASE_URI="http://127.0.0.1:9")
    env.update(extra)
    dump = os.path.join(workdir, f"callgrind-{seq}.out")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
           f"--callgrind-out-file={dump}", sys.executable, "-m", "uvicorn", "bench_app:app",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
    with open(os.path.join(workdir, f"server-{seq}.log"), "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=HERE, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for_port(port, 300)
        url = f"http://127.0.0.1:{port}{endpoint}"
        post = ECHO_BODY if endpoint == "/echo" else None
        run_wrk(url, seconds=8, connections=CONNECTIONS, post_json=post, timeout_s=60)   # warm, uncounted
        for step in (["-i", "on"], ["-z"]):
            subprocess.run(["callgrind_control", *step, str(proc.pid)], check=True, capture_output=True)
        result = run_wrk(url, seconds=seconds, connections=CONNECTIONS, post_json=post, timeout_s=60)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        stop_group(proc, 120)   # valgrind writes its last counts on the way out
    if result.errors:
        raise SystemExit(f"wrk saw {result.errors} errors against {mode} {extra}: see {workdir}")
    totals = thread_totals(dump)
    if 1 not in totals:
        raise SystemExit(f"no callgrind dump of the main thread in {workdir}")
    n = max(result.requests, 1)
    return {"requests": n, "main": totals[1] / n, "other": sum(v for k, v in totals.items() if k != 1) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--endpoint", default="/hello", choices=["/hello", "/echo"])
    rows_of = parser.add_mutually_exclusive_group()
    rows_of.add_argument("--against", help="another checkout of this package: bare, ours and it")
    rows_of.add_argument("--options", action="store_true", help="ours with and without the callbacks and LOG_BODY")
    args = parser.parse_args()
    require_valgrind()
    if args.against:
        other = checkout_env(args.against)
        configs = {"bare": CONFIGS["bare"], "ours, writing": CONFIGS["ours, writing"], "other, writing": ("ours", other)}
    else:
        configs = OPTIONS if args.options else CONFIGS
    workdir = tempfile.mkdtemp(prefix="moesif-instructions-")
    rows: List[Tuple[str, Dict[str, float]]] = []
    started = time.monotonic()
    try:
        for seq, (name, (mode, extra)) in enumerate(configs.items()):
            rows.append((name, count(mode, extra, args.endpoint, args.seconds, workdir, seq)))
            print(f"{name:24s} " + "  ".join(f"{k} {v:,.0f}" for k, v in rows[-1][1].items()), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    bare = rows[0][1]["main"]
    print(f"\n{args.endpoint}: instructions per request (callgrind, {args.seconds} s of wrk -c{CONNECTIONS} each, "
          f"{time.monotonic() - started:.0f} s in all)")
    print(f"{'configuration':24s} {'requests':>9s} {'main':>10s} {'other':>9s} {'main added':>11s} {'ratio':>6s}")
    for name, m in rows:
        print(f"{name:24s} {m['requests']:9,.0f} {m['main']:10,.0f} {m['other']:9,.0f} "
              f"{m['main'] - bare:+11,.0f} {m['main'] / bare:6.2f}")


if __name__ == "__main__":
    main()
