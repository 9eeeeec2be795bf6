"""Is aiosqlite worth a dependency? The flusher's claim + ack cycle, two ways.

    pip install aiosqlite && python benchmarks/queue_access.py --events 20000

- AsyncDB (what the flusher uses): each whole transaction (`queue_store.claim`,
  `queue_store.ack`) runs in one hop to a database thread.
- aiosqlite: the same statements, each awaited on its own (BEGIN, SELECT,
  UPDATE, COMMIT are four hops), as its API forces, with an asyncio lock so that
  concurrent workers do not interleave their transactions.

Prints wall time and CPU per event for each, 4 workers claiming batches of 100.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from drain_benchmark import fill  # noqa: E402

from moesifasgi.delivery.async_db import AsyncDB  # noqa: E402
from moesifasgi.storage import queue_store as qs  # noqa: E402


async def with_asyncdb(path: str, batch: int, workers: int) -> int:
    db = AsyncDB(path)
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        owner = f"w{n}"
        while True:
            rows = await db.run(qs.claim, owner, batch, 120.0)
            if not rows:
                return
            acked = await db.run(qs.ack, owner, [r.id for r in rows])
            done += acked  # not `done += await ...`: that reads done before the await

    await asyncio.gather(*(worker(n) for n in range(workers)))
    await db.close()
    return done


async def with_aiosqlite(path: str, batch: int, workers: int) -> int:
    import aiosqlite

    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA busy_timeout = 5000")
    lock = asyncio.Lock()
    done = 0

    async def worker(n: int) -> None:
        nonlocal done
        owner = f"w{n}"
        while True:
            async with lock:
                now = time.time()
                await conn.execute("BEGIN IMMEDIATE")
                cur = await conn.execute(
                    "SELECT id, body FROM events WHERE claimed_until < ? ORDER BY id LIMIT ?", (now, batch))
                rows = await cur.fetchall()
                if rows:
                    await conn.execute("UPDATE events SET claimed_by = ?, claimed_until = ? "
                                       "WHERE id BETWEEN ? AND ? AND claimed_until < ?",
                                       (owner, now + 120, rows[0][0], rows[-1][0], now))
                await conn.execute("COMMIT")
            if not rows:
                return
            async with lock:
                await conn.execute("BEGIN IMMEDIATE")
                cur = await conn.execute("DELETE FROM events WHERE claimed_by = ? AND id BETWEEN ? AND ?",
                                         (owner, rows[0][0], rows[-1][0]))
                deleted = cur.rowcount
                await conn.execute("UPDATE counters SET value = value + ? WHERE name = 'sent'", (deleted,))
                await conn.execute("COMMIT")
            done += deleted

    await asyncio.gather(*(worker(n) for n in range(workers)))
    await conn.close()
    return done


def measure(name: str, runner, events: int, batch: int, workers: int) -> None:
    directory = tempfile.mkdtemp(prefix="moesif-access-")
    path = os.path.join(directory, "queue.sqlite")
    fill(path, events)
    wall, cpu = time.perf_counter(), time.process_time()
    done = asyncio.run(runner(path, batch, workers))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{name:10} {done} events: {done / wall:,.0f} events/s, {cpu / done * 1e6:.1f} µs CPU per event")
    shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    measure("AsyncDB", with_asyncdb, args.events, args.batch_size, args.workers)
    measure("aiosqlite", with_aiosqlite, args.events, args.batch_size, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
