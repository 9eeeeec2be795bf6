"""The two `moesif-flush` commands that post to Moesif: `run` (the daemon) and `drain`.

Kept apart from `cli` because they own an event loop and signal handling.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Optional

import click

from moesifasgi import storage
from moesifasgi.delivery.flusher import DrainStats, Flusher, FlusherOptions
from moesifasgi.delivery.lease import LEASE_SECONDS, RENEW_INTERVAL
from moesifasgi.delivery.outcomes import StopReason
from moesifasgi.delivery.pump import BATCH_WAIT
from moesifasgi.storage import queue_store as qs

from .cli import CliContext, Interrupted, cli, command, pass_ctx

logger = logging.getLogger(__name__)

GIVE_UP_AFTER = 60.0
_REASONS = {
    "auth": "Moesif refused the application id (401/402/403)",
    "retry": "Moesif could not be reached or answered with an error",
    "reject": "Moesif answered with an unexpected client error (check --base-uri)",
    "deadline": "--max-seconds ran out",
}


def _batch_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
                      envvar="MOESIF_FLUSH_CONCURRENCY", help="Batches in flight [env MOESIF_FLUSH_CONCURRENCY].")(fn)
    return click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True,
                        envvar="MOESIF_BATCH_SIZE", help="Events per post [env MOESIF_BATCH_SIZE].")(fn)


def _db_in_loop(batch_size: int) -> bool:
    # The loop belongs to the flusher here. Measured on 2 cores (benchmarks/):
    # small batches drain faster with queue operations on the loop (no thread
    # hop, no GIL hand-off); from ~100 events a batch, the longer transactions
    # stall the posts in flight and the database thread wins.
    return batch_size <= 50


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, callback)


def _refuse_foreign_file(path: str) -> None:
    """`run` creates a missing file, but never adopts a file that is not a queue."""
    if os.path.isdir(path):
        raise click.ClickException(f"{path} is a directory, not a queue file")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        storage.connect_readonly(path).close()
    except storage.SchemaTooNewError as exc:
        raise click.ClickException(str(exc)) from exc
    except storage.QueueError as exc:
        if "not a moesifasgi queue" in str(exc):
            raise click.ClickException(str(exc)) from exc
        # An older schema is migrated by the flusher; anything else it retries.


@command(cli)
@_batch_options
@click.option("--batch-wait", type=click.FloatRange(min=0, max=3600), default=BATCH_WAIT, show_default=True,
              envvar="MOESIF_BATCH_WAIT",
              help="Seconds a partial batch waits for more events before it is posted [env MOESIF_BATCH_WAIT].")
@click.option("--drain-on-stop", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              envvar="MOESIF_DRAIN_ON_STOP",
              help="On SIGTERM/SIGINT keep draining until the backlog is empty or SECONDS have passed "
                   "(a second signal stops at once) [env MOESIF_DRAIN_ON_STOP].")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None, envvar="MOESIF_METRICS_PORT",
              help="Serve Prometheus/OpenMetrics metrics at http://ADDRESS:PORT/metrics [env MOESIF_METRICS_PORT].")
@click.option("--metrics-address", default="127.0.0.1", show_default=True, envvar="MOESIF_METRICS_ADDRESS",
              help="Address the metrics server listens on (0.0.0.0 for every interface, e.g. in a pod).")
@click.option("--stats-interval", type=float, default=60.0, hidden=True)
@click.option("--lease-seconds", type=float, default=LEASE_SECONDS, hidden=True)
@click.option("--renew-interval", type=float, default=RENEW_INTERVAL, hidden=True)
@click.option("--stop-timeout", type=float, default=8.0, hidden=True)
@pass_ctx
def run(ctx: CliContext, batch_size: int, concurrency: int, batch_wait: float, drain_on_stop: float,
        metrics_port: Optional[int], metrics_address: str, stats_interval: float,
        lease_seconds: float, renew_interval: float, stop_timeout: float) -> None:
    """Run the flusher daemon: take the lease and drain the queue until SIGTERM/SIGINT.

    Use it with the middleware setting FLUSHER="external". A missing queue file
    is created (as the app's workers would) and a path it cannot use yet is
    retried, so the daemon may start before the app. It logs one line a minute.
    On SIGTERM it stops claiming (after draining the backlog for up to
    --drain-on-stop seconds), finishes or releases the batches in flight,
    releases the lease and exits 0 within about 10 more seconds.

    \b
    Example:
      moesif-flush run --queue /var/lib/app/moesif.sqlite --drain-on-stop 20 --metrics-port 9464
    """
    application_id = ctx.require_application_id()
    base_uri = ctx.require_base_uri()
    path, source = ctx.queue_source()
    _refuse_foreign_file(path)
    if not os.path.exists(path):
        logger.info("no queue file at %s yet (%s); creating it", path, source)
    options = FlusherOptions(batch_size=batch_size, concurrency=concurrency, batch_wait=batch_wait,
                             lease_seconds=lease_seconds, renew_interval=min(renew_interval, lease_seconds / 3),
                             db_in_loop=_db_in_loop(batch_size))
    flusher = Flusher(path, application_id, base_uri, options)
    server = None
    if metrics_port is not None:
        from .metrics import serve, this_process  # prometheus_client: the daemon's, never the app's
        try:
            server, _ = serve(path, metrics_port, metrics_address,
                              this_process(lambda: flusher.is_leader, lambda: flusher.delivery.failures))
        except OSError as exc:
            raise click.ClickException(f"cannot serve metrics on {metrics_address}:{metrics_port}: "
                                       f"{exc.strerror or exc}") from exc
        logger.info("metrics at http://%s:%d/metrics", metrics_address, server.server_port)
    try:
        asyncio.run(_daemon(flusher, stats_interval, stop_timeout, drain_on_stop))
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


async def _daemon(flusher: Flusher, stats_interval: float, stop_timeout: float, drain_on_stop: float) -> None:
    stop, now_please = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            now_please.set()  # a second signal: stop at once
        stop.set()

    _on_signals(on_signal)
    task = asyncio.ensure_future(flusher.run())
    logger.info("draining %s to %s (pid owner %s)", flusher.queue_path, flusher.client.base_uri, flusher.owner)
    last_sent, last_failed, last_time = 0, 0, time.monotonic()
    while not stop.is_set() and not task.done():
        await _first(stop.wait(), task, timeout=stats_interval)
        if stop.is_set() or task.done():
            break
        now = time.monotonic()
        try:
            backlog: Any = await flusher.db.run(qs.pending)
        except Exception as exc:  # the flusher logs the file's problem; the stats line says it too
            backlog = f"unknown ({exc})"
        sent, failed = flusher.sent, flusher.failed_posts
        logger.info("sent %d events in the last %.0f s, backlog %s, %d failed posts%s",
                    sent - last_sent, now - last_time, backlog, failed - last_failed,
                    "" if flusher.is_leader else " (another process holds the lease)")
        last_sent, last_failed, last_time = sent, failed, now
    if drain_on_stop > 0 and not task.done() and not now_please.is_set():
        await _drain_before_stop(flusher, drain_on_stop, now_please)
    logger.info("stopping: %d events sent by this process", flusher.sent)
    await flusher.stop(timeout=stop_timeout)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise click.ClickException(f"the flusher stopped on an error: {task.exception()}")


async def _first(*aws: Any, timeout: float) -> None:
    """Wait until one of `aws` is done or `timeout` passes; cancel the waits made here."""
    futures = [asyncio.ensure_future(a) for a in aws]
    made = [f for a, f in zip(aws, futures) if f is not a]
    try:
        await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in made:
            f.cancel()


async def _drain_before_stop(flusher: Flusher, seconds: float, now_please: asyncio.Event) -> None:
    """Keep the flusher running until the queue is empty or `seconds` have passed."""
    flusher.hurry()
    deadline = time.monotonic() + seconds
    next_log = 0.0
    backlog = -1
    while time.monotonic() < deadline and not now_please.is_set():
        try:
            backlog = await flusher.db.run(qs.pending)
        except Exception as exc:
            logger.warning("cannot read the backlog while stopping: %s", exc)
            backlog = -1
        if backlog == 0:
            logger.info("backlog drained; stopping")
            return
        if time.monotonic() >= next_log:
            logger.info("stopping after the backlog: %s events left, %.0f s at most "
                        "(send the signal again to stop now)", backlog, deadline - time.monotonic())
            next_log = time.monotonic() + 5.0
        await _first(now_please.wait(), timeout=0.2)
    logger.warning("stopping with %s events still queued (--drain-on-stop %g s ran out, or a second signal); "
                   "they stay in the queue file", backlog if backlog >= 0 else "some", seconds)


@command(cli)
@click.option("--max-seconds", type=click.FloatRange(min=0), default=None,
              help="Stop after this long even if events remain.")
@click.option("--give-up-after", type=click.FloatRange(min=0), default=GIVE_UP_AFTER, show_default=True,
              metavar="SECONDS", help="Stop when every post has failed for this long (Moesif unreachable).")
@click.option("--progress-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              metavar="SECONDS", help="Seconds between progress lines on stderr when not on a terminal.")
@_batch_options
@pass_ctx
def drain(ctx: CliContext, max_seconds: Optional[float], give_up_after: float, progress_interval: float,
          batch_size: int, concurrency: int) -> None:
    """Post every pending event now, then print what was sent, what failed and what is left.

    Safe next to a running flusher: claims keep two drainers off the same events.
    Exits 1 with one line saying why when events remain because of errors
    (Moesif refused the key, unreachable for --give-up-after seconds,
    --max-seconds ran out), 130 when interrupted.

    \b
    Example:
      moesif-flush drain --application-id ... --queue /var/lib/app/moesif.sqlite --max-seconds 60
    """
    application_id = ctx.require_application_id()
    base_uri = ctx.require_base_uri()
    conn = ctx.connect()
    try:
        pending = qs.pending(conn)
    finally:
        conn.close()
    flusher = Flusher(ctx.queue_path(), application_id, base_uri,
                      FlusherOptions(batch_size=batch_size, concurrency=concurrency,
                                     db_in_loop=_db_in_loop(batch_size)))
    outcome = _DrainRun(flusher, pending, give_up_after, progress_interval)
    if sys.stderr.isatty():
        with click.progressbar(length=pending, label="draining", file=sys.stderr) as bar:
            stats = asyncio.run(outcome.run(max_seconds, bar))
    else:
        stats = asyncio.run(outcome.run(max_seconds, None))
    click.echo(f"sent {stats.sent} events, {stats.dead_lettered} dead-lettered, "
               f"{stats.failed - stats.dead_lettered} not sent after errors, {stats.remaining} left in the queue "
               f"({stats.elapsed:.1f} s)")
    if stats.dead_lettered:
        click.echo(f"{stats.dead_lettered} events went to the dead letters: see `moesif-flush dead-letters list`")
    if outcome.interrupted:
        raise Interrupted(f"interrupted: {stats.remaining} events left in the queue")
    if outcome.gave_up:
        raise click.ClickException(
            f"gave up: every post failed for {give_up_after:g} s (last error: {flusher.delivery.last_failure}); "
            f"{stats.remaining} events left in the queue")
    if stats.remaining and stats.error:
        why = _REASONS.get(stats.error, stats.error)
        if stats.error != StopReason.DEADLINE and flusher.delivery.last_failure:
            why += f" (last error: {flusher.delivery.last_failure})"
        raise click.ClickException(f"{stats.remaining} events left: {why}")


class _DrainRun:
    """One `drain`: progress, the give-up watch and signals around Flusher.drain()."""

    def __init__(self, flusher: Flusher, pending: int, give_up_after: float, progress_interval: float) -> None:
        self.flusher = flusher
        self.pending = pending
        self.give_up_after = give_up_after
        self.progress_interval = progress_interval
        self.interrupted = False
        self.gave_up = False

    def _interrupt(self) -> None:
        self.interrupted = True
        self.flusher.interrupt_drain()

    async def run(self, max_seconds: Optional[float], bar: Any) -> DrainStats:
        _on_signals(self._interrupt)
        watch = asyncio.ensure_future(self._watch())
        done = [0]
        started = time.monotonic()
        next_log = [started + self.progress_interval]

        def progress(count: int) -> None:
            if bar is not None and count > done[0]:
                bar.update(count - done[0])
            elif bar is None and time.monotonic() >= next_log[0]:
                rate = count / max(time.monotonic() - started, 1e-6)
                logger.info("drained %d of %d events (%.0f/s)", count, self.pending, rate)
                next_log[0] = time.monotonic() + self.progress_interval
            done[0] = max(done[0], count)

        try:
            return await self.flusher.drain(max_seconds, progress)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await self.flusher.aclose()

    async def _watch(self) -> None:
        """Give up once posts have failed without a success for give_up_after seconds."""
        delivery = self.flusher.delivery
        last_good = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            if delivery.errors == 0:
                last_good = time.monotonic()
            elif time.monotonic() - last_good >= self.give_up_after:
                self.gave_up = True
                self.flusher.interrupt_drain(StopReason.UNREACHABLE)
                return
