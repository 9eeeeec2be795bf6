"""Several batches in flight: N workers that claim a batch, deliver it, repeat.

One batch per tick would cap the drain rate at one round trip per batch; with N
workers the round trips overlap while the database thread and gzip keep the CPU
busy. Memory stays at N batches whatever the backlog: rows are read from the
file only when a worker claims them.

With `batch_wait`, a worker holds off while fewer than `batch_size` events are
waiting, for up to `batch_wait` seconds (the original package's
EVENT_BATCH_TIMEOUT). A post costs about the same CPU whether it carries 3
events or 100, and an embedded flusher spends that CPU inside a web worker: under
steady traffic, posting whatever arrived since the last claim meant many tiny
batches and a third of the worker's time. A backlog still drains at full speed,
every worker claiming a full batch back to back.

Profiles go through the same workers: when a worker finds no event to claim
(and at least every PROFILE_POLL seconds while events trickle in), it delivers
the queued user and company profiles, one worker at a time, and their failed
posts pause every worker through the same `Delivery` backoff and auth probe as
events'. Events come first, but during a backlog a worker still looks for profiles
once per PROFILE_POLL after a post, so they never wait for the backlog to end.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

from ..diagnostics import ProblemLog
from ..storage import queue_store as qs
from .async_db import AsyncDB
from .outcomes import StopReason
from .posting import Delivery
from .profile_delivery import deliver_profiles, has_claimable_profiles

logger = logging.getLogger(__name__)

# Longer than any single post can take with the client's timeouts (connect 5 s +
# write 30 s + read 30 s + pool 10 s), so a claim never expires under a live post.
CLAIM_SECONDS = 120.0
IDLE_POLL = 0.1
# The original package's EVENT_BATCH_TIMEOUT default: how long a partial batch
# may wait for more events before it is posted anyway.
BATCH_WAIT = 1.0
# How often an idle (or waiting) pump looks for profiles: they are rare, and
# this read must not add to what an idle flusher costs.
PROFILE_POLL = 1.0


@dataclass
class DrainStats:
    sent: int = 0
    dead_lettered: int = 0
    failed: int = 0  # events dead-lettered plus events still queued after a failed post
    remaining: int = 0  # events pending in the queue file at the end (any process's)
    error: Optional[StopReason] = None  # why the drain stopped early
    elapsed: float = 0.0


class Pump:
    def __init__(self, db: AsyncDB, delivery: Delivery, owner: str, *, batch_size: int = 100,
                 concurrency: int = 4, claim_seconds: float = CLAIM_SECONDS, idle_poll: float = IDLE_POLL,
                 max_batch_bytes: int = qs.MAX_BATCH_BYTES, batch_wait: float = 0.0) -> None:
        self.db = db
        self.delivery = delivery
        self.owner = owner
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.claim_seconds = claim_seconds
        self.idle_poll = idle_poll
        self.max_batch_bytes = max_batch_bytes
        self.batch_wait = batch_wait
        self.sent = 0
        self.dead_lettered = 0
        self.failed_ids: Dict[int, int] = {}  # ids given back after a failed post -> their events
        self.last_error: Optional[StopReason] = None
        self._holding: Dict[int, List[int]] = {}  # worker number -> ids it has claimed
        self._holding_events: Dict[int, int] = {}  # worker number -> the events those rows hold
        # worker number -> (ids Moesif accepted, success time, their events): deleted with the next claim
        self._to_ack: Dict[int, Tuple[List[int], Optional[float], int]] = {}
        self._stopping = asyncio.Event()
        # One worker at a time waits for a full batch and claims it; the others
        # queue behind it instead of racing it for the same few rows.
        self._claim_gate = asyncio.Lock()
        self._until_empty = False
        self._deadline: Optional[float] = None
        self._problems = ProblemLog(logger, interval=None)  # shared by the workers: one line per episode
        self.grace = 5.0  # seconds in-flight posts get after a stop (the owner may lower it)
        self.profiles_sent = 0
        self._profiles_gate = asyncio.Lock()  # one worker delivers profiles at a time
        self._profiles_looked = 0.0  # time.monotonic() of the last look for profiles
        self._profiles_given_up = False  # a drain tries them until their first failed post

    def request_stop(self) -> None:
        """Stop claiming; batches in flight finish on their own."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        """Events (not rows: a row may be a segment of many) claimed and not settled."""
        return sum(self._holding_events.values())

    async def run(self, *, until_empty: bool = False, deadline: Optional[float] = None,
                  grace: Optional[float] = None) -> None:
        """Work until stopped (or the queue is empty, or `deadline` on time.monotonic()).

        After a stop, in-flight posts get `grace` seconds; the claims of those
        still running then are released so another drainer can take them at once.
        """
        self._until_empty, self._deadline = until_empty, deadline
        if grace is not None:
            self.grace = grace
        workers = [asyncio.ensure_future(self._worker(n)) for n in range(self.concurrency)]
        try:
            await self._wait_stop(workers)
            self._stopping.set()
            done, running = await asyncio.wait(workers, timeout=self.grace)
        except asyncio.CancelledError:
            running = set(workers)
            self._stopping.set()
            await self._cancel(running)
            raise
        await self._cancel(running)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error("a flusher worker failed", exc_info=task.exception())

    async def _wait_stop(self, workers: List["asyncio.Future[None]"]) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            await asyncio.wait([stop, *workers], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not self._stopping.is_set() and self._deadline is not None and time.monotonic() >= self._deadline:
                self.last_error = self.last_error or StopReason.DEADLINE
        finally:
            stop.cancel()

    async def _cancel(self, running: "Set[asyncio.Future[None]]") -> None:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        await asyncio.shield(self._flush_acks())
        held = [i for ids in self._holding.values() for i in ids]
        self._holding.clear()
        self._holding_events.clear()
        if held:
            try:
                await asyncio.shield(self.db.run(qs.release, self.owner, held))
            except Exception as exc:  # they come back anyway when the claim expires
                logger.warning("could not release %d claimed events: %s", len(held), exc)

    def _should_stop(self) -> bool:
        if self._stopping.is_set():
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.last_error = self.last_error or StopReason.DEADLINE
            return True
        return False

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _worker(self, number: int) -> None:
        delivery = self.delivery
        while not self._should_stop():
            pause = delivery.pause_remaining()
            if pause > 0:
                await self._flush_acks([number])
                if self._until_empty and delivery.auth_blocked:
                    # Waiting minutes for a probe is the daemon's job, not drain's.
                    self.last_error = StopReason.AUTH
                    self._stopping.set()
                    break
                await self._sleep(min(pause, 0.5))
                continue
            try:
                await self._one_batch(number)
                if self._problems.clear("batch"):
                    logger.warning("flushing works again")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A database hiccup (locked past the busy timeout, disk full, the
                # file removed) must not kill the worker: the claimed rows come
                # back when released or expired, and we try again a moment later.
                # The traceback once per episode, not once a second per worker.
                if not self._problems.report("batch", "flushing a batch failed; retrying shortly",
                                             level=logging.ERROR, exc_info=True):
                    logger.debug("flushing a batch failed again: %s", exc)
                await self._release_held(number)
                await self._sleep(1.0)
        await self._flush_acks([number])

    async def _one_batch(self, number: int) -> None:
        if self.batch_wait > 0 and not self._until_empty:
            async with self._claim_gate:
                if not await self._wait_for_batch():
                    return
                rows = await self._ack_and_claim(number)
        else:
            rows = await self._ack_and_claim(number)
        if not rows:
            # A drain delivers the profiles before it stops, once no events are in
            # flight (events first); a daemon looks now and then.
            due = not self._holding if self._until_empty else self._profiles_due()
            if due and await self._deliver_profiles():
                return  # events may have come meanwhile: claim again
            if (self._until_empty and not self._holding and not self._profiles_gate.locked()
                    and self.delivery.pause_remaining() == 0):
                self._stopping.set()
                return
            await self._idle()
            return
        outcome = await self.delivery.deliver(rows, defer_ack=True)
        del self._holding[number]
        del self._holding_events[number]
        if outcome.to_ack:
            self._to_ack[number] = (outcome.to_ack, outcome.success_at, outcome.to_ack_events)
        self.sent += outcome.sent
        self.dead_lettered += outcome.dead_lettered
        if outcome.released:
            self.last_error = None if outcome.error is None else StopReason.after(outcome.error)
            if self._until_empty:  # only a drain reports them; a daemon would hoard ids
                self.failed_ids.update(outcome.released_events)
        if self.failed_ids:
            for acked_id in outcome.acked:
                self.failed_ids.pop(acked_id, None)
        if not self._until_empty and self._profiles_due():
            # During a backlog too: a profile waits about PROFILE_POLL behind the
            # events, never until the backlog (which may never end) is gone.
            await self._deliver_profiles()

    async def _ack_and_claim(self, number: int) -> List[qs.Row]:
        ack_ids, success_at, _ = self._to_ack.get(number, ((), None, 0))
        acked, rows = await self.db.run(qs.ack_and_claim, self.owner, ack_ids, self.batch_size, self.claim_seconds,
                                        max_bytes=self.max_batch_bytes, success_at=success_at)
        self._to_ack.pop(number, None)
        self.sent += acked
        if rows:
            # Cancelled mid-post, the ids stay here for _cancel to release.
            self._holding[number] = [r.id for r in rows]
            self._holding_events[number] = sum(r.count for r in rows)
        return rows

    async def _wait_for_batch(self) -> bool:
        """Wait until `batch_size` events are claimable, or some have waited
        `batch_wait` seconds; False when the pump stops first.

        The count is the queue's pending counter minus the rows this pump holds
        claimed: one indexed read, no scan. Another drainer's claims (a
        `moesif-flush drain` next to us) make it overestimate, which only means
        an early partial batch.
        """
        first_seen: Optional[float] = None
        while not self._should_stop():
            held = self.in_flight + sum(events for _, _, events in self._to_ack.values())
            waiting = await self.db.run(qs.pending) - held
            if waiting >= self.batch_size:
                return True
            if waiting > 0:
                now = time.monotonic()
                if first_seen is None:
                    first_seen = now
                elif now - first_seen >= self.batch_wait:
                    return True
            # Accepted rows would otherwise stay claimed (and be re-posted after a
            # crash) for as long as we wait. The other workers' too: they queue at
            # the gate with theirs, and their rows count as held above.
            await self._flush_acks()
            if self._profiles_due():
                await self._deliver_profiles()
            await self._sleep(min(self.idle_poll, self.batch_wait))
        return False

    async def _flush_acks(self, numbers: Optional[List[int]] = None) -> None:
        """Delete, in one transaction, the rows Moesif accepted for these workers
        (every worker's when `numbers` is None)."""
        keys = list(self._to_ack) if numbers is None else [n for n in numbers if n in self._to_ack]
        pending = [self._to_ack.pop(n) for n in keys]
        if not pending:
            return
        ids = [i for batch_ids, _, _ in pending for i in batch_ids]
        times = [at for _, at, _ in pending if at is not None]
        try:
            acked = await self.db.run(qs.ack, self.owner, ids, success_at=max(times) if times else None)
            # Never `self.sent += await ...`: that reads self.sent before the await
            # and stores over what the other workers added meanwhile (drain printed
            # 100-500 fewer "sent" than the queue's counter).
            self.sent += acked
        except Exception as exc:  # re-posted after the claim expires; Moesif drops the copies
            logger.warning("could not delete %d events Moesif accepted: %s", len(ids), exc)

    async def _release_held(self, number: int) -> None:
        ids = self._holding.pop(number, None)
        self._holding_events.pop(number, None)
        if ids:
            try:
                await self.db.run(qs.release, self.owner, ids)
            except Exception as exc:
                logger.warning("could not release %d claimed events (they return when the claim expires): %s",
                               len(ids), exc)

    async def _idle(self) -> None:
        # A read-only look every IDLE_POLL: an idle flusher must not keep taking
        # the write lock that the web workers' writers need.
        while not self._should_stop():
            await self._sleep(self.idle_poll)
            if self._holding and self._until_empty:
                return  # a failing batch may come back: look again soon
            if await self.db.run(qs.has_claimable):
                return
            if self._profiles_due() and await self.db.run(has_claimable_profiles):
                self._profiles_looked = 0.0  # the worker delivers them at once
                return

    def _profiles_due(self) -> bool:
        """True at most once per PROFILE_POLL (and then it counts as a look)."""
        now = time.monotonic()
        if now - self._profiles_looked < PROFILE_POLL or self._profiles_given_up:
            return False
        self._profiles_looked = now
        return True

    async def _deliver_profiles(self) -> bool:
        """Deliver the queued profiles, if any, and no other worker is; True when some went out."""
        if self._profiles_gate.locked() or self._profiles_given_up:
            return False
        async with self._profiles_gate:
            self._profiles_looked = time.monotonic()
            if not await self.db.run(has_claimable_profiles):
                return False
            stats = await deliver_profiles(self.db, self.delivery.client, owner=self.owner)
        self.profiles_sent += stats.sent
        if stats.error is None:
            if stats.sent:
                self.delivery.profiles_accepted()
            return stats.sent + stats.dead_lettered > 0
        if self._until_empty:
            # As before profiles shared this loop: a drain tries them once and
            # leaves them queued for the daemon, without holding the drain in a backoff.
            self._profiles_given_up = True
        else:
            await self.delivery.profiles_failed(stats.error, stats.status, stats.retry_after)
        return False

    def stats(self, remaining: int, elapsed: float) -> DrainStats:
        failed = self.dead_lettered + sum(self.failed_ids.values())
        error = self.last_error if (self.failed_ids or self.last_error in (StopReason.AUTH, StopReason.DEADLINE)) else None
        return DrainStats(self.sent, self.dead_lettered, failed, remaining, error, elapsed)
