"""The flusher: compete for the lease, drain the queue while leader, keep the config fresh.

    flusher = Flusher("/var/lib/app/queue.sqlite", "APP_ID")
    task = asyncio.create_task(flusher.run())   # daemon or embedded
    ...
    await flusher.stop(timeout=8)               # in-flight batches finish or are released

`drain()` empties the queue without the lease (claims keep it safe next to a
running leader) and is what `moesif-flush drain` and `force_flush` use.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import httpx

from moesifasgi.storage import maintenance, salvage

from ..storage import queue_store as qs
from .async_db import AsyncDB
from .backoff import Backoff
from .client import DEFAULT_BASE_URI, MoesifClient
from .posting import AUTH_PROBE_INTERVAL, Delivery
from .lease import LEASE_SECONDS, RENEW_INTERVAL, Lease, owner_is_dead
from .outcomes import StopReason
from .pump import BATCH_WAIT, CLAIM_SECONDS, IDLE_POLL, DrainStats, Pump
from .profile_delivery import release_profiles
from .remote_config import CONFIG_INTERVAL, MIN_FETCH_GAP, RemoteConfig

logger = logging.getLogger(__name__)

__all__ = ["DrainStats", "Flusher", "FlusherOptions"]


@dataclass(frozen=True)
class FlusherOptions:
    batch_size: int = 100
    # While leader, a partial batch waits up to this long for more events
    # (see pump.py); drain() never waits.
    batch_wait: float = BATCH_WAIT
    concurrency: int = 4
    lease_seconds: float = LEASE_SECONDS
    renew_interval: float = RENEW_INTERVAL
    claim_seconds: float = CLAIM_SECONDS
    idle_poll: float = IDLE_POLL
    config_interval: float = CONFIG_INTERVAL
    config_min_gap: float = MIN_FETCH_GAP
    auth_probe_interval: float = AUTH_PROBE_INTERVAL
    max_event_age: float = qs.MAX_EVENT_AGE_S
    max_batch_bytes: int = qs.MAX_BATCH_BYTES
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    shutdown_grace: float = 5.0
    db_in_loop: bool = False  # see AsyncDB: only where the loop belongs to the flusher
    # How often the leader looks for corrupt files to salvage and free pages to
    # give back to the disk (moesifasgi.storage.salvage / .maintenance).
    maintenance_interval: float = 10.0


def _salvage_into_live(conn: "sqlite3.Connection", queue_path: str) -> None:
    salvage.salvage_moved_files(queue_path, conn)


class Flusher:
    def __init__(self, queue_path: str, application_id: str, base_uri: str = DEFAULT_BASE_URI,
                 options: Optional[FlusherOptions] = None, *,
                 transport: Optional[httpx.AsyncBaseTransport] = None) -> None:
        self.options = opts = options or FlusherOptions()
        self.queue_path = queue_path
        self.lease = Lease(duration=opts.lease_seconds)
        self.owner = self.lease.owner
        self.db = AsyncDB(queue_path, in_loop=opts.db_in_loop)
        # Room for every batch in flight plus the config poll.
        self.client = MoesifClient(application_id, base_uri, transport=transport,
                                   max_connections=opts.concurrency + 2)
        self.remote_config = RemoteConfig(self.db, self.client, interval=opts.config_interval,
                                          min_gap=opts.config_min_gap)
        self.delivery = Delivery(
            self.db, self.client, self.owner,
            backoff=Backoff(opts.backoff_initial, max(opts.backoff_max, opts.backoff_initial)),
            auth_probe_interval=opts.auth_probe_interval, max_event_age=opts.max_event_age,
            on_config_etag=self.remote_config.note_etag)
        self.is_leader = False
        self._sent_before = 0  # by pumps that finished
        self._pump: Optional[Pump] = None
        self._stop: Optional[asyncio.Event] = None
        self._running: Optional["asyncio.Future[None]"] = None
        self._draining: Optional[Pump] = None

    # -- introspection ----------------------------------------------------------

    @property
    def sent(self) -> int:
        """Events accepted by Moesif through this flusher since it was created."""
        return self._sent_before + (self._pump.sent if self._pump else 0)

    @property
    def failed_posts(self) -> int:
        return self.delivery.failed_posts

    # -- the leader loop ----------------------------------------------------------

    async def run(self, *, standby: bool = True) -> None:
        """Compete for the lease and drain while leader, until `stop()`.

        With `standby=False` it returns instead of waiting whenever another
        process holds the lease (the embedded helper process: its worker starts a
        new one when the lease falls free).
        """
        self._stop = asyncio.Event()
        self._running = asyncio.current_task()
        failing = False
        try:
            while not self._stop.is_set():
                try:
                    acquired = await self.db.run(self.lease.try_acquire)
                    failing = False
                except Exception as exc:
                    # Once per episode: a broken path would otherwise log every few seconds.
                    log = logger.debug if failing else logger.warning
                    log("cannot use the queue file %s (%s); events stay queued, retrying", self.queue_path, exc)
                    failing, acquired = True, None
                if acquired is not None and acquired.leader:
                    await self._lead(acquired.previous_owner)
                    if not standby:
                        break
                elif not standby and acquired is not None:
                    logger.info("another process drains %s; this one exits", self.queue_path)
                    break
                else:
                    await self._wait_stop(self.options.renew_interval)
        finally:
            await self._give_up_lease()

    async def _lead(self, previous_owner: Optional[str]) -> None:
        self.is_leader = True
        logger.info("this process (%s) now drains the Moesif queue %s", self.owner, self.queue_path)
        if previous_owner and owner_is_dead(previous_owner):
            # The old leader died (kill -9): its claims would otherwise hide its
            # batches until they expire.
            try:
                released = await self.db.run(qs.release, previous_owner, None)
            except Exception as exc:  # they come back when the claims expire
                logger.warning("could not take back the dead leader's claims: %s", exc)
                released = 0
            if released:
                logger.info("took back %d events claimed by the dead leader %s", released, previous_owner)
            try:
                await self.db.run(release_profiles, previous_owner)
            except Exception as exc:
                logger.warning("could not take back the dead leader's profile claims: %s", exc)
        pump = self._pump = self._new_pump()
        config_task = asyncio.ensure_future(self.remote_config.run())
        pump_task = asyncio.ensure_future(pump.run(grace=self.options.shutdown_grace))
        maintenance_task = asyncio.ensure_future(self._maintain())
        try:
            assert self._stop is not None
            while not self._stop.is_set() and not pump_task.done():
                await self._wait_stop(self.options.renew_interval, pump_task)
                if self._stop.is_set() or pump_task.done():
                    break
                try:
                    still_leader = await self.db.run(self.lease.renew)
                except Exception as exc:
                    # Keep draining: the claims protect the rows, and we retry the
                    # renewal before the lease can expire.
                    logger.warning("cannot renew the flusher lease: %s", exc)
                    continue
                if not still_leader:
                    logger.warning("lost the flusher lease (another process took it, or the queue file "
                                   "was replaced); stopping to drain")
                    break
        finally:
            pump.request_stop()
            try:
                await pump_task
            finally:
                for task in (config_task, maintenance_task):
                    task.cancel()
                await asyncio.gather(config_task, maintenance_task, return_exceptions=True)
                self._sent_before += pump.sent
                self._pump = None
                self.is_leader = False

    async def _maintain(self) -> None:
        """While leader: deliver what corrupt files moved aside still hold, and give
        the pages of a drained backlog back to the disk, a step at a time."""
        failing = False
        while True:
            try:
                if salvage.moved_files(self.queue_path):
                    await self.db.run(_salvage_into_live, self.queue_path)
                if await self.db.run(maintenance.worth_compacting):
                    while await self.db.run(maintenance.compact_step) > 0:
                        await asyncio.sleep(0.05)  # the web workers' writers get the lock in between
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                (logger.debug if failing else logger.warning)("queue maintenance failed: %s", exc)
                failing = True
            await asyncio.sleep(self.options.maintenance_interval)

    def _new_pump(self) -> Pump:
        o = self.options
        return Pump(self.db, self.delivery, self.owner, batch_size=o.batch_size, concurrency=o.concurrency,
                    claim_seconds=o.claim_seconds, idle_poll=o.idle_poll, max_batch_bytes=o.max_batch_bytes,
                    batch_wait=o.batch_wait)

    async def _wait_stop(self, seconds: float, also: "Optional[asyncio.Future[None]]" = None) -> None:
        assert self._stop is not None
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([stop] + ([also] if also else []), timeout=seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    async def _give_up_lease(self) -> None:
        try:
            await asyncio.shield(self.db.run(self.lease.release))
        except Exception as exc:  # it expires on its own within lease_seconds
            logger.debug("could not release the flusher lease: %s", exc)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming, let in-flight batches finish (or release them), release the lease."""
        if self._stop is not None:
            self._stop.set()
        if self._pump is not None:
            self._pump.grace = max(0.1, timeout - 1.0)
            self._pump.request_stop()
        running = self._running
        if running is not None and not running.done() and running is not asyncio.current_task():
            done, _ = await asyncio.wait([running], timeout=timeout)
            if not done:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.db.close()

    # -- one-off draining -----------------------------------------------------------

    async def drain(self, max_seconds: Optional[float] = None,
                    progress: Optional[Callable[[int], None]] = None) -> DrainStats:
        """Post everything pending now; stop early at `max_seconds` or on an auth error."""
        started = time.monotonic()
        deadline = None if max_seconds is None else started + max_seconds
        if salvage.moved_files(self.queue_path):  # what a corrupt file moved aside still holds goes too
            await self.db.run(_salvage_into_live, self.queue_path)
        pump = self._draining = self._new_pump()
        reporter = asyncio.ensure_future(self._report(pump, progress)) if progress else None
        try:
            # The pump delivers the profiles too, once it finds no event to claim.
            await pump.run(until_empty=True, deadline=deadline, grace=self.options.shutdown_grace)
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            self._sent_before += pump.sent
            self._draining = None
        if progress is not None:
            progress(pump.sent + pump.dead_lettered)
        remaining = await self.db.run(qs.pending)
        return pump.stats(remaining, time.monotonic() - started)

    def interrupt_drain(self, reason: StopReason = StopReason.INTERRUPTED) -> None:
        """Make a running `drain()` stop claiming and return (signal handlers call this);
        `reason` becomes its DrainStats.error."""
        if self._draining is not None:
            self._draining.last_error = reason
            self._draining.request_stop()

    def hurry(self) -> None:
        """Post partial batches at once from now on: a daemon draining its backlog
        before it stops has no time to wait for full ones."""
        self.options = replace(self.options, batch_wait=0.0)
        if self._pump is not None:
            self._pump.batch_wait = 0.0

    @staticmethod
    async def _report(pump: Pump, progress: Callable[[int], None]) -> None:
        while True:
            progress(pump.sent + pump.dead_lettered)
            await asyncio.sleep(0.2)

    async def force_flush(self, timeout: float = 5.0) -> bool:
        """Drain for at most `timeout` seconds; True when nothing is left pending."""
        stats = await self.drain(timeout)
        return stats.remaining == 0
