"""Posting queued user and company profiles to Moesif.

The rules are those of events (see delivery.py): rows are claimed, posted as one
JSON array to ``/v1/users/batch`` or ``/v1/companies/batch``, and deleted only
after a 2xx; a transient error or a refused application id gives them back for
later; a 400/413 splits the batch until the bad profile is alone, and a profile
rejected alone goes to the dead letters (``kind`` 'user' or 'company', reason
'profile rejected'), never back into the events queue.

The synchronous functions take a ``sqlite3.Connection`` first, like
``queue_store``'s, so the CLI and the flusher's database thread share them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from ..storage.profile_store import (  # noqa: F401  (the statements live with the queue file's owner)
    MAX_PROFILE_BATCH_BYTES, REJECTED_REASON, ProfileRow, ack_profiles, claim_profiles, dead_letter_profiles,
    has_claimable_profiles, profile_counts, release_profiles, requeue_profile_dead_letters,
)
from .async_db import AsyncDB
from .backoff import Backoff
from .client import AUTH, MoesifClient, PostResult
from .outcomes import PostOutcome
from .splitting import post_isolating

__all__ = ["ProfileStats", "deliver_profiles", "profile_counts", "release_profiles",
           "requeue_profile_dead_letters", "run_profile_delivery"]

logger = logging.getLogger(__name__)

ENDPOINTS = {"user": "/v1/users/batch", "company": "/v1/companies/batch"}
CLAIM_SECONDS = 120.0
AUTH_PROBE_INTERVAL = 300.0


@dataclass
class ProfileStats:
    users_sent: int = 0
    companies_sent: int = 0
    dead_lettered: int = 0
    released: int = 0  # rows given back after a failed post
    error: Optional[PostOutcome] = None  # the outcome that stopped delivery (retry, auth...)
    status: Optional[int] = None
    retry_after: Optional[float] = None

    @property
    def sent(self) -> int:
        return self.users_sent + self.companies_sent


# -- delivery ------------------------------------------------------------------------

Runner = Callable[..., Awaitable[Any]]


def _runner(db: Any) -> Tuple[Runner, Optional[AsyncDB]]:
    """`run(fn, *args)` for an AsyncDB, a path (opened here) or a sqlite3.Connection."""
    if hasattr(db, "run"):
        return db.run, None
    if isinstance(db, sqlite3.Connection):
        async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(fn, db, *args, **kwargs)
        return run, None
    owned = AsyncDB(os.fspath(db))
    return owned.run, owned


async def deliver_profiles(db: Any, client: MoesifClient, *, batch_size: int = 100, owner: Optional[str] = None,
                           claim_seconds: float = CLAIM_SECONDS,
                           max_bytes: int = MAX_PROFILE_BATCH_BYTES) -> ProfileStats:
    """Post every claimable profile (users, then companies); stop at the first failed post.

    `db` is the flusher's AsyncDB, a queue file path, or a sqlite3.Connection.
    """
    run, owned = _runner(db)
    owner = owner or f"profiles-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stats = ProfileStats()
    try:
        for kind in ("user", "company"):
            while True:
                rows = await run(claim_profiles, kind, owner, batch_size, claim_seconds, max_bytes=max_bytes)
                if not rows or not await _post(run, client, owner, rows, stats):
                    break
            if stats.error is not None:
                break
    finally:
        if owned is not None:
            await owned.close()
    return stats


async def _post(run: Runner, client: MoesifClient, owner: str, rows: List[ProfileRow], stats: ProfileStats) -> bool:
    kind = rows[0].kind

    async def post(part: List[ProfileRow]) -> PostResult:
        return await client.post_batch(ENDPOINTS[kind], [r.body for r in part])

    async def accepted(part: List[ProfileRow], whole: bool) -> None:
        sent = await run(ack_profiles, owner, [r.id for r in part])
        if kind == "user":
            stats.users_sent += sent
        else:
            stats.companies_sent += sent

    async def rejected(row: ProfileRow, result: PostResult) -> None:
        stats.dead_lettered += await run(dead_letter_profiles, owner, [row.id], result.status)
        logger.warning("Moesif rejected the %s profile %s (%s); it was moved to the dead letters",
                       kind, row.profile_id, result.error or result.status)

    unsettled: List[ProfileRow] = list(rows)
    try:
        failure, unsent = await post_isolating(rows, post, accepted=accepted, rejected=rejected, unsettled=unsettled)
    except asyncio.CancelledError:
        # Releasing a row already acked or dead-lettered changes nothing: it is gone.
        if unsettled:  # give them back now rather than when the claim expires
            await asyncio.shield(run(release_profiles, owner, [r.id for r in unsettled]))
        raise
    if failure is None:
        return True
    stats.released += await run(release_profiles, owner, [r.id for r in unsent])
    stats.error, stats.status, stats.retry_after = failure.outcome, failure.status, failure.retry_after
    logger.debug("posting %s profiles failed (%s); they stay queued", kind, failure.error)
    return False


async def run_profile_delivery(db: Any, client: MoesifClient, *, owner: str, batch_size: int = 100,
                               interval: float = 1.0, paused: Callable[[], float] = lambda: 0.0) -> None:
    """The leader's loop: deliver queued profiles every `interval` seconds until cancelled.

    `paused` is the event delivery's ``pause_remaining``: while events back off
    (Moesif down, key refused) profiles wait too.
    """
    run, owned = _runner(db)
    backoff = Backoff(1.0, 60.0)
    failing = False
    try:
        while True:
            wait = interval
            if paused() <= 0:
                try:
                    if await run(has_claimable_profiles):
                        stats = await deliver_profiles(owned or db, client, batch_size=batch_size, owner=owner)
                        if stats.error == AUTH:
                            wait = AUTH_PROBE_INTERVAL
                        elif stats.error is not None:
                            wait = backoff.next_delay(stats.retry_after)
                        else:
                            backoff.reset()
                    failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # With a traceback once per episode; a broken file would
                    # otherwise log one every few seconds.
                    if failing:
                        logger.debug("delivering profiles failed again: %s", exc)
                    else:
                        logger.exception("delivering profiles failed; retrying shortly")
                    failing = True
                    wait = 5.0
            await asyncio.sleep(max(wait, min(paused(), 5.0)))
    finally:
        if owned is not None:
            await owned.close()
