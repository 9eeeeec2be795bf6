"""The two `moesif-flush` commands that post to Moesif: `run` (the daemon) and `drain`.

Kept apart from `cli` because they own an event loop and signal handling; the
group's context object (`ctx.obj`) gives them the queue path and application id.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import Any, Callable, Optional

import click

from . import queue_store as qs
from .flusher import DrainStats, Flusher, FlusherOptions
from .lease import LEASE_SECONDS, RENEW_INTERVAL
from .pump import BATCH_WAIT

logger = logging.getLogger(__name__)

_REASONS = {
    "auth": "Moesif refused the application id (401/402/403)",
    "retry": "Moesif could not be reached or answered with an error",
    "reject": "Moesif answered with an unexpected client error (check --base-uri)",
    "deadline": "--max-seconds ran out",
    "interrupted": "interrupted",
}


def _batch_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
                      envvar="MOESIF_FLUSH_CONCURRENCY", help="Batches in flight [env MOESIF_FLUSH_CONCURRENCY].")(fn)
    return click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
                        envvar="MOESIF_BATCH_SIZE", help="Events per post [env MOESIF_BATCH_SIZE].")(fn)


def _db_in_loop(batch_size: int) -> bool:
    # The loop belongs to the flusher here. Measured on 2 cores (benchmarks/):
    # small batches drain ~15% faster with queue operations on the loop (no thread
    # hop, no GIL hand-off); from ~100 events a batch, the longer transactions
    # stall the posts in flight and the database thread wins.
    return batch_size <= 50


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, callback)


@click.command()
@_batch_options
@click.option("--batch-wait", type=click.FloatRange(min=0, max=3600), default=BATCH_WAIT, show_default=True,
              envvar="MOESIF_BATCH_WAIT",
              help="Seconds a partial batch waits for more events before it is posted [env MOESIF_BATCH_WAIT].")
@click.option("--stats-interval", type=float, default=60.0, hidden=True)
@click.option("--lease-seconds", type=float, default=LEASE_SECONDS, hidden=True)
@click.option("--renew-interval", type=float, default=RENEW_INTERVAL, hidden=True)
@click.option("--stop-timeout", type=float, default=8.0, hidden=True)
@click.pass_obj
def run(obj: Any, batch_size: int, concurrency: int, batch_wait: float, stats_interval: float,
        lease_seconds: float, renew_interval: float, stop_timeout: float) -> None:
    """Run the flusher daemon: take the lease and drain the queue until SIGTERM/SIGINT.

    Use it with the middleware setting FLUSHER="external". It logs one line a
    minute; on SIGTERM it finishes or releases the batches in flight, releases
    the lease and exits 0 within 10 seconds.

    \b
    Example:
      MOESIF_APPLICATION_ID=... moesif-flush --queue /var/lib/app/moesif.sqlite run
    """
    application_id = obj.require_application_id()
    obj.connect().close()  # a missing or unusable file is a one-line error, before any loop
    options = FlusherOptions(batch_size=batch_size, concurrency=concurrency, batch_wait=batch_wait,
                             lease_seconds=lease_seconds, renew_interval=min(renew_interval, lease_seconds / 3), db_in_loop=_db_in_loop(batch_size))
    flusher = Flusher(obj.queue_path(), application_id, obj.base_uri, options)
    asyncio.run(_daemon(flusher, stats_interval, stop_timeout))


async def _daemon(flusher: Flusher, stats_interval: float, stop_timeout: float) -> None:
    stop = asyncio.Event()
    _on_signals(stop.set)
    task = asyncio.ensure_future(flusher.run())
    logger.info("draining %s to %s (pid owner %s)", flusher.queue_path, flusher.client.base_uri, flusher.owner)
    last_sent, last_failed, last_time = 0, 0, time.monotonic()
    while not stop.is_set() and not task.done():
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiter, task], timeout=stats_interval, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if stop.is_set() or task.done():
            break
        now = time.monotonic()
        backlog = await flusher.db.run(qs.pending)
        sent, failed = flusher.sent, flusher.failed_posts
        logger.info("sent %d events in the last %.0f s, backlog %d, %d failed posts%s",
                    sent - last_sent, now - last_time, backlog, failed - last_failed,
                    "" if flusher.is_leader else " (another process holds the lease)")
        last_sent, last_failed, last_time = sent, failed, now
    logger.info("stopping: %d events sent by this process", flusher.sent)
    await flusher.stop(timeout=stop_timeout)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise click.ClickException(f"the flusher stopped on an error: {task.exception()}")


@click.command()
@click.option("--max-seconds", type=click.FloatRange(min=0), default=None,
              help="Stop after this long even if events remain.")
@_batch_options
@click.pass_obj
def drain(obj: Any, max_seconds: Optional[float], batch_size: int, concurrency: int) -> None:
    """Post every pending event now, then print what was sent, what failed and what is left.

    Safe next to a running flusher: claims keep two drainers off the same events.
    Exits 1 when events remain because of errors (or --max-seconds ran out).

    \b
    Example:
      moesif-flush --queue /var/lib/app/moesif.sqlite --application-id ... drain --max-seconds 60
    """
    application_id = obj.require_application_id()
    conn = obj.connect()
    try:
        pending = qs.pending(conn)
    finally:
        conn.close()
    flusher = Flusher(obj.queue_path(), application_id, obj.base_uri,
                      FlusherOptions(batch_size=batch_size, concurrency=concurrency,
                                     db_in_loop=_db_in_loop(batch_size)))
    if sys.stdout.isatty():
        with click.progressbar(length=pending, label="draining") as bar:
            stats = asyncio.run(_drain(flusher, max_seconds, bar))
    else:
        stats = asyncio.run(_drain(flusher, max_seconds, None))
    click.echo(f"sent {stats.sent}, failed {stats.failed}, left {stats.remaining} ({stats.elapsed:.1f} s)")
    if stats.dead_lettered:
        click.echo(f"{stats.dead_lettered} events went to the dead letters: see `moesif-flush dead-letters list`")
    if stats.remaining and stats.error:
        raise click.ClickException(f"{stats.remaining} events left: {_REASONS.get(stats.error, stats.error)}")


async def _drain(flusher: Flusher, max_seconds: Optional[float], bar: Any) -> DrainStats:
    _on_signals(flusher.interrupt_drain)
    done = [0]

    def progress(count: int) -> None:
        if bar is not None and count > done[0]:
            bar.update(count - done[0])
            done[0] = count

    try:
        return await flusher.drain(max_seconds, progress)
    finally:
        await flusher.aclose()
