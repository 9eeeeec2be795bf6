"""What a wake-up costs the queue writer on this machine: one group commit, warm and after a sleep.

    python benchmarks/wake_cost.py

The writer thread commits a group, sleeps the commit interval (10 ms), and commits
again. This prints the thread's CPU time per iteration for the same work run back to
back and run with that sleep in between: a group commit of 30 events, an empty
transaction, nothing at all, and a small pure-Python loop. On a virtual machine the
difference (the sleep itself, then cold caches) can exceed the work; it is paid once
per group, which is why the writer's CPU per event falls as groups grow.

Then a real `QueueWriter` is fed events at a steady `--rate` (2,600/s by default,
about what one worker serves here) for 4 s, three times: its thread's CPU per group
and per event, and the events per group.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import stat_cpu  # noqa: E402
from moesifasgi import storage  # noqa: E402
from moesifasgi.queue_writer import QueueWriter  # noqa: E402
from moesifasgi.storage import intake  # noqa: E402

INTERVAL = 0.01


def per_iteration(work: Callable[[], None], iterations: int, sleep: float) -> float:
    """The calling thread's CPU µs per iteration of `work` (and the sleep)."""
    started = time.thread_time()
    for _ in range(iterations):
        work()
        if sleep:
            time.sleep(sleep)
    return (time.thread_time() - started) / iterations * 1e6


def _thread_cpu(native_id: int) -> float:
    return stat_cpu(f"/proc/self/task/{native_id}/stat")


def paced_writer(workdir: str, rate: float, seconds: float = 4.0) -> None:
    """A QueueWriter fed `rate` events per second: its thread's CPU per group and per event."""
    event = json.dumps({"request": {"uri": "http://127.0.0.1:8000/hello", "verb": "GET",
                                    "headers": {"host": "127.0.0.1:8000"}},
                        "response": {"status": 200, "body": "aGVsbG8=", "transfer_encoding": "base64"},
                        "direction": "Incoming", "pad": "x" * 500})
    writer = QueueWriter(os.path.join(workdir, "paced.sqlite"), 10**9, application_id="wake-cost")
    try:
        writer.submit(("warm-up", time.time(), event))
        writer.flush(10)
        cpu, commits = _thread_cpu(writer._thread.native_id), writer.commits
        count = int(rate * seconds)
        started = time.perf_counter()
        for i in range(count):
            while time.perf_counter() < started + i / rate:
                time.sleep(0.0005)
            writer.submit((f"id-{i}", time.time(), event))
        writer.flush(10)
        used = _thread_cpu(writer._thread.native_id) - cpu
        groups = writer.commits - commits
        print(f"{rate:.0f} events/s: writer {used / groups * 1e6:7.0f} µs per group, {used / count * 1e6:5.1f} µs "
              f"per event, {count / groups:5.1f} events per group")
    finally:
        writer.close(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2600.0)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="moesif-wake-")
    conn = storage.connect(os.path.join(workdir, "q.sqlite"))
    rows = [(f"id-{i}", time.time(), '{"n": %d, "pad": "%s"}' % (i, "x" * 780)) for i in range(30)]

    def group_commit() -> None:
        with storage.immediate(conn):
            intake.pending_events(conn)
            intake.insert_events(conn, rows, None)

    def empty_transaction() -> None:
        with storage.immediate(conn):
            intake.pending_events(conn)

    def nothing() -> None:
        pass

    def python_loop() -> None:
        sum(range(2000))

    print(f"thread CPU µs per iteration: back to back, and with a {INTERVAL * 1000:.0f} ms sleep after each")
    try:
        for work in (group_commit, empty_transaction, nothing, python_loop):
            warm = per_iteration(work, 300, 0)
            slept = per_iteration(work, 200, INTERVAL)
            print(f"{work.__name__:18s} {warm:8.1f} {slept:8.1f}")
        for _ in range(3):
            paced_writer(workdir, args.rate)
    finally:
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
