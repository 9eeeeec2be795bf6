"""Drain benchmark: fill a queue with realistic events, drain it to a loopback collector.

    python benchmarks/drain_benchmark.py                       # 200,000 events, BATCH_SIZE 100, 4 in flight
    python benchmarks/drain_benchmark.py --batch-size 100 --concurrency 8

It also measures the posting limit in the same run: the same events, read
from the file into memory first, posted by the same client (gzip, BATCH_SIZE,
FLUSH_CONCURRENCY in flight) to the same stand-in, in a child process whose
CPU is measured the same way. The drain can be no faster than that; the queue's
cost is the difference, and the flusher's CPU per event is what the host pays.

The collector runs in its own process (`python -m moesifasgi.testing.local_collector`)
so that it does not share the flusher's GIL; the flusher runs in this process, and
its peak RSS (VmHWM) is read before and after the drain. The memory goal is
that the peak does not grow with the backlog: run with --events 20000 and 200000
and compare.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

from moesifasgi import storage

try:
    from moesifasgi.storage import intake, queue_store
    if not hasattr(intake, "SEGMENT_EVENTS"):  # a checkout from before segments
        intake = None  # type: ignore[assignment]
except ImportError:
    intake = None  # type: ignore[assignment]

try:
    from moesifasgi.delivery import client as client_module
    from moesifasgi.delivery.client import MoesifClient
    from moesifasgi.delivery.flusher import Flusher, FlusherOptions
except ImportError:  # a checkout from before the flusher moved (to measure it the same way)
    from moesifasgi_flush import client as client_module  # type: ignore[no-redef]
    from moesifasgi_flush.client import MoesifClient  # type: ignore[no-redef]
    from moesifasgi_flush.flusher import Flusher, FlusherOptions  # type: ignore[no-redef]

_PATHS = ["/v1/orders", "/v1/orders/{id}", "/v1/users/{id}/profile", "/v2/search", "/health"]
_AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
           "python-httpx/0.27.0", "okhttp/4.12.0"]


def realistic_event(rng: random.Random, created: float) -> tuple:
    """One event shaped like the middleware's output: ~1 KB of JSON."""
    tid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    path = rng.choice(_PATHS).replace("{id}", str(rng.randint(1, 10**6)))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + ".%03d" % rng.randint(0, 999)
    event = {
        "request": {
            "time": stamp, "uri": f"https://api.example.com{path}?page={rng.randint(1, 50)}&limit=20",
            "verb": rng.choice(["GET", "GET", "POST", "PUT"]), "ip_address": f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "headers": {"host": "api.example.com", "user-agent": rng.choice(_AGENTS), "accept": "application/json",
                        "authorization": "*****", "x-request-id": uuid.uuid4().hex},
            "body": {"customer_id": rng.randint(1, 10**6), "items": [{"sku": f"SKU-{rng.randint(1, 9999)}", "qty": rng.randint(1, 5)}]},
            "transfer_encoding": "json",
        },
        "response": {
            "time": stamp, "status": rng.choice([200, 200, 200, 201, 404]),
            "headers": {"content-type": "application/json", "content-length": str(rng.randint(100, 4000)),
                        "x-moesif-transaction-id": tid},
            "body": base64.b64encode(os.urandom(96)).decode(), "transfer_encoding": "base64",
        },
        "user_id": f"user-{rng.randint(1, 5000)}", "company_id": f"co-{rng.randint(1, 300)}",
        "direction": "Incoming", "weight": 1, "transaction_id": tid,
        "metadata": {"region": rng.choice(["eu-west-1", "us-east-1"]), "build": "2024.11.3"},
    }
    return tid, created, json.dumps(event, separators=(",", ":"))


def fill(path: str, count: int, group: int = 0) -> int:
    """Queue `count` events as the writers would, in group commits of `group`
    events (segments, migration 0005); `group` 0: one row per event, as files
    written before segments hold them."""
    conn = storage.connect(path)
    rng = random.Random(42)
    now = time.time()
    total_bytes = 0
    for start in range(0, count, 10_000):
        rows = [realistic_event(rng, now - (count - start - i) * 0.001) for i in range(min(10_000, count - start))]
        total_bytes += sum(len(r[2]) for r in rows)
        with storage.immediate(conn):
            if group and intake is not None:
                for at in range(0, len(rows), group):
                    intake.insert_events(conn, rows[at:at + group], None)
            else:
                conn.executemany("INSERT INTO events (transaction_id, created_at, body) VALUES (?, ?, ?)", rows)
    conn.close()
    return total_bytes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a child from /proc (Linux), to see which side is saturated."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_collector() -> tuple:
    proc = subprocess.Popen([sys.executable, "-m", "moesifasgi.testing.local_collector", "--port", "0", "--verbose",
                             "--interval", "3600"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # "listening on http://127.0.0.1:PORT"
    return proc, line.rsplit(" ", 1)[-1]


async def drain(path: str, url: str, batch_size: int, concurrency: int, db_in_loop: bool) -> tuple:
    options = FlusherOptions(batch_size=batch_size, concurrency=concurrency, db_in_loop=db_in_loop)
    flusher = Flusher(path, "benchmark-app", url, options)
    db_cpu = None
    if hasattr(flusher, "db") and not getattr(flusher.db, "in_loop", True):
        db_cpu = await flusher.db.run(lambda conn: time.thread_time())  # the database thread's CPU so far
    started = time.perf_counter()
    stats = await flusher.drain()
    elapsed = time.perf_counter() - started
    if db_cpu is not None:
        db_cpu = await flusher.db.run(lambda conn: time.thread_time()) - db_cpu
    await flusher.aclose()
    return stats, elapsed, db_cpu


def _read_bodies(path: str) -> list:
    """Each event's JSON, as the flusher posts it."""
    conn = sqlite3.connect(path)
    try:
        if intake is not None:
            return [event.body.encode() for event in queue_store.stored_events(conn)]
        return [body for (body,) in conn.execute("SELECT body FROM events ORDER BY id")]
    finally:
        conn.close()


async def _post_all(bodies: list, url: str, batch_size: int, concurrency: int) -> int:
    client = MoesifClient("benchmark-app", url, max_connections=concurrency + 2)
    batches = [bodies[i:i + batch_size] for i in range(0, len(bodies), batch_size)]
    posted = 0

    async def worker() -> None:
        nonlocal posted
        while batches:
            batch = batches.pop()
            result = await client.post_events(batch)
            if not result.ok:
                raise RuntimeError(f"the stand-in refused a post: {result.error}")
            posted += len(batch)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.aclose()
    return posted


def posting_limit(path: str, url: str, batch_size: int, concurrency: int) -> tuple:
    """(events, seconds, CPU seconds) of posting the queue's events from memory (run in a child)."""
    bodies = _read_bodies(path)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    posted = asyncio.run(_post_all(bodies, url, batch_size, concurrency))
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return posted, elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=100, help="BATCH_SIZE (default 100, as the setting)")
    parser.add_argument("--concurrency", type=int, default=4, help="FLUSH_CONCURRENCY (default 4)")
    parser.add_argument("--queue", help="queue file (default: a new temporary file)")
    parser.add_argument("--group", type=int, default=25,
                        help="events per group commit when filling (a writer's group, stored as one segment "
                             "of up to 100 events; default 25: a worker taking ~2,500 calls/s commits ~25 every "
                             "10 ms); 0: one row per event, as before segments")
    parser.add_argument("--db-thread", choices=["auto", "yes", "no"], default="auto",
                        help="queue operations on a thread (the embedded flusher) or on the loop; "
                             "auto: as `moesif-flush run/drain` choose (on the loop up to 50 events a batch)")
    args = parser.parse_args()

    workdir = None if args.queue else tempfile.mkdtemp(prefix="moesif-bench-")
    path = args.queue or os.path.join(workdir, "queue.sqlite")
    try:
        return _run(args, path)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)  # a 200k backlog is ~265 MB


def peak_rss_kb() -> int:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over exec, so a benchmark started by a big parent (compare.py after
    its loads) would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _run(args: argparse.Namespace, path: str) -> int:
    t0 = time.perf_counter()
    # Filled by a child process so that this process's peak RSS is the flusher's alone.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        body_bytes = pool.apply(fill, (path, args.events, args.group))
    rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM events").fetchone()[0]
    print(f"backlog: {args.events} events in {rows} rows, {body_bytes / args.events:.0f} B of JSON each on average, "
          f"queue file {os.path.getsize(path) / 1e6:.0f} MB, filled in {time.perf_counter() - t0:.1f} s")

    collector, url = start_collector()
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            posted, post_elapsed, post_cpu = pool.apply(posting_limit, (path, url, args.batch_size,
                                                                         args.concurrency))
        rss_before = peak_rss_kb()
        usage_before, collector_before = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(collector.pid)
        in_loop = args.batch_size <= 50 if args.db_thread == "auto" else args.db_thread == "no"
        stats, elapsed, db_cpu = asyncio.run(drain(path, url, args.batch_size, args.concurrency, in_loop))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        rss_peak = peak_rss_kb()
        flusher_cpu = usage.ru_utime + usage.ru_stime - usage_before.ru_utime - usage_before.ru_stime
        collector_cpu = cpu_seconds(collector.pid) - collector_before
    finally:
        collector.terminate()
        summary = collector.communicate(timeout=10)[0].strip().splitlines()
    rate = stats.sent / elapsed if elapsed else 0.0
    print(f"batch size {args.batch_size}, {args.concurrency} batches in flight, "
          f"queue operations {'on the event loop' if in_loop else 'on a thread'}, "
          f"gzip by {getattr(client_module, 'COMPRESSOR', 'zlib')}")
    print(f"drained {stats.sent} events in {elapsed:.2f} s: {rate:,.0f} events/s "
          f"(failed {stats.failed}, left {stats.remaining})")
    print(f"CPU during the drain: flusher {flusher_cpu / elapsed:.0%} of a core, "
          f"collector {collector_cpu / elapsed:.0%} of a core")
    limit = posted / post_elapsed if post_elapsed else 0.0
    print(f"posting limit (the same events posted from memory, same client and stand-in): {limit:,.0f} events/s, "
          f"{post_cpu / post_elapsed:.0%} of a core")
    print(f"drain / posting limit: {rate / limit if limit else 0:.2f}")
    print(f"flusher CPU per event: {flusher_cpu / max(1, stats.sent) * 1e6:.1f} µs "
          f"(posting alone: {post_cpu / max(1, posted) * 1e6:.1f} µs)")
    if db_cpu:
        print(f"  of which the queue's database thread (claim, ack, SQLite): {db_cpu / max(1, stats.sent) * 1e6:.1f} µs, "
              f"the event loop (posting, gzip, the rest): {(flusher_cpu - db_cpu) / max(1, stats.sent) * 1e6:.1f} µs")
    print(f"flusher peak RSS: {rss_peak / 1024:.1f} MB (before the drain: {rss_before / 1024:.1f} MB)")
    print("collector: " + (summary[-1] if summary else "?"))
    return 0 if stats.remaining == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
