"""What a wake-up costs the queue writer on this machine: one group commit, warm and after a sleep.

    python benchmarks/wake_cost.py

The writer thread commits a group, sleeps the commit interval (10 ms), and commits
again. This prints the thread's CPU time per iteration for the same work run back to
back and run with that sleep in between: a group commit of 30 events, an empty
transaction, nothing at all, and a small pure-Python loop. On a virtual machine the
difference (the sleep itself, then cold caches) can exceed the work; it is paid once
per group, which is why the writer's CPU per event falls as groups grow.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moesifasgi import storage  # noqa: E402
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


def main() -> None:
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
    finally:
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
