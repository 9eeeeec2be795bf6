"""Posting queued user and company profiles to Moesif.

The rules are those of events (see delivery.py): rows are claimed, posted as one
JSON array to ``/v1/users/batch`` or ``/v1/companies/batch``, and deleted only
after a 2xx; a transient error or a refused application id gives them back for
later; a 400/413 splits the batch until the bad profile is alone, and a profile
rejected alone goes to the dead letters (``kind`` 'user' or 'company', reason
'profile rejected'), never back into the events queue.

The flusher's pump calls `deliver_profiles` from the same workers that post
events (see pump.py), whenever they find no event to claim; a failed post
pauses them all through the events' backoff. The synchronous functions take a
``sqlite3.Connection`` first, like ``queue_store``'s, so the CLI and the
flusher's database thread share them.
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
from .client import MoesifClient, PostResult
from .outcomes import PostOutcome
from .splitting import post_isolating

__all__ = ["ProfileStats", "deliver_profiles", "profile_counts", "release_profiles",
           "requeue_profile_dead_letters"]

logger = logging.getLogger(__name__)

ENDPOINTS = {"user": "/v1/users/batch", "company": "/v1/companies/batch"}
CLAIM_SECONDS = 120.0


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
