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
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from moesifasgi.storage import immediate

from .async_db import AsyncDB
from .backoff import Backoff
from .client import AUTH, OK, REJECT, TOO_LARGE, MoesifClient
from ..storage.queue_store import claim_sql, ids_json

__all__ = ["ProfileStats", "deliver_profiles", "profile_counts", "release_profiles",
           "requeue_profile_dead_letters", "run_profile_delivery"]

logger = logging.getLogger(__name__)

ENDPOINTS = {"user": "/v1/users/batch", "company": "/v1/companies/batch"}
# moesifapi documents the profile batch endpoints as taking less than 250 kB.
MAX_PROFILE_BATCH_BYTES = 250_000
CLAIM_SECONDS = 120.0
REJECTED_REASON = "profile rejected"
AUTH_PROBE_INTERVAL = 300.0
_SPLIT_STATUSES = frozenset({400, 413})


class ProfileRow(NamedTuple):
    id: int
    kind: str
    profile_id: str
    body: str


@dataclass
class ProfileStats:
    users_sent: int = 0
    companies_sent: int = 0
    dead_lettered: int = 0
    released: int = 0  # rows given back after a failed post
    error: Optional[str] = None  # the client outcome that stopped delivery (retry, auth...)
    status: Optional[int] = None
    retry_after: Optional[float] = None

    @property
    def sent(self) -> int:
        return self.users_sent + self.companies_sent


# -- queue operations (synchronous, one transaction each) -------------------------------

_CLAIM_SQL = claim_sql("profiles", "id, kind, profile_id, body", extra_filter="kind = ? AND ")
_IDS = "id IN (SELECT value FROM json_each(?))"


def claim_profiles(conn: sqlite3.Connection, kind: str, owner: str, limit: int, claim_seconds: float, *,
                   max_bytes: int = MAX_PROFILE_BATCH_BYTES, now: Optional[float] = None) -> List[ProfileRow]:
    """Claim up to `limit` unclaimed profiles of one kind, oldest first, within `max_bytes`."""
    now = time.time() if now is None else now
    with immediate(conn):
        rows = conn.execute(_CLAIM_SQL, (owner, now + claim_seconds, kind, now, limit, max_bytes - 1)).fetchall()
    return [ProfileRow(*r) for r in sorted(rows)]


def has_claimable_profiles(conn: sqlite3.Connection, now: Optional[float] = None) -> bool:
    now = time.time() if now is None else now
    return conn.execute("SELECT 1 FROM profiles WHERE claimed_until < ? LIMIT 1", (now,)).fetchone() is not None


def ack_profiles(conn: sqlite3.Connection, owner: str, ids: Sequence[int]) -> int:
    with immediate(conn):
        deleted = conn.execute(f"DELETE FROM profiles WHERE claimed_by = ? AND {_IDS}", (owner, ids_json(ids))).rowcount
        if deleted:
            conn.execute("UPDATE counters SET value = value + ? WHERE name = 'profiles_sent'", (deleted,))
    return deleted


def release_profiles(conn: sqlite3.Connection, owner: str, ids: Optional[Sequence[int]] = None) -> int:
    """Give claimed profiles back (all of `owner`'s when `ids` is None)."""
    sql = "UPDATE profiles SET claimed_by = NULL, claimed_until = 0 WHERE claimed_by = ?"
    with immediate(conn):
        if ids is None:
            return conn.execute(sql, (owner,)).rowcount
        return conn.execute(f"{sql} AND {_IDS}", (owner, ids_json(ids))).rowcount


def dead_letter_profiles(conn: sqlite3.Connection, owner: str, ids: Sequence[int], status: Optional[int],
                         reason: str = REJECTED_REASON, *, now: Optional[float] = None) -> int:
    now = time.time() if now is None else now
    with immediate(conn):
        moved = conn.execute(
            "INSERT INTO dead_letters (transaction_id, created_at, body, status, reason, failed_at, kind) "
            f"SELECT kind || ':' || profile_id, created_at, body, ?, ?, ?, kind FROM profiles "
            f"WHERE claimed_by = ? AND {_IDS} ORDER BY id",
            (status, reason, now, owner, ids_json(ids))).rowcount
        conn.execute(f"DELETE FROM profiles WHERE claimed_by = ? AND {_IDS}", (owner, ids_json(ids)))
        if moved:
            conn.execute("UPDATE counters SET value = value + ? WHERE name = 'profiles_dead_lettered'", (moved,))
    return moved


def requeue_profile_dead_letters(conn: sqlite3.Connection, ids: Optional[Sequence[int]] = None) -> int:
    """Put dead-lettered profiles (all, or those dead-letter ids) back in the profiles queue."""
    where = "kind IN ('user', 'company')" + ("" if ids is None else f" AND {_IDS}")
    params: Tuple[Any, ...] = () if ids is None else (ids_json(ids),)
    with immediate(conn):
        moved = conn.execute(
            "INSERT INTO profiles (kind, profile_id, created_at, body) "
            "SELECT kind, substr(transaction_id, length(kind) + 2), created_at, body "
            f"FROM dead_letters WHERE {where} ORDER BY id", params).rowcount
        conn.execute(f"DELETE FROM dead_letters WHERE {where}", params)
    return moved


def profile_counts(conn: sqlite3.Connection) -> Dict[str, int]:
    """For `moesif-flush status`: the profile counters, and dead letters by kind."""
    counts = {name: int(value) for name, value in conn.execute(
        "SELECT name, value FROM counters WHERE name LIKE 'profiles_%'")}
    counts["profile_dead_letters"] = int(conn.execute(
        "SELECT COUNT(*) FROM dead_letters WHERE kind IN ('user', 'company')").fetchone()[0])
    return counts


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
    stack = [rows]
    part: List[ProfileRow] = []
    try:
        while stack:
            part = stack.pop()
            result = await client.post_batch(ENDPOINTS[kind], [r.body for r in part])
            if result.outcome == OK:
                sent = await run(ack_profiles, owner, [r.id for r in part])
                if kind == "user":
                    stats.users_sent += sent
                else:
                    stats.companies_sent += sent
            elif result.outcome in (REJECT, TOO_LARGE) and result.status in _SPLIT_STATUSES:
                if len(part) == 1:
                    stats.dead_lettered += await run(dead_letter_profiles, owner, [part[0].id], result.status)
                    logger.warning("Moesif rejected the %s profile %s (%s); it was moved to the dead letters",
                                   kind, part[0].profile_id, result.error or result.status)
                else:
                    middle = len(part) // 2
                    stack += [part[middle:], part[:middle]]  # the first half is posted first
            else:
                ids = [r.id for p in [part, *stack] for r in p]
                stack = []
                stats.released += await run(release_profiles, owner, ids)
                stats.error, stats.status, stats.retry_after = result.outcome, result.status, result.retry_after
                logger.debug("posting %s profiles failed (%s); they stay queued", kind, result.error)
                return False
    except asyncio.CancelledError:
        # Releasing a row already acked or dead-lettered changes nothing: it is gone.
        held = [r.id for p in [part, *stack] for r in p]
        if held:  # give them back now rather than when the claim expires
            await asyncio.shield(run(release_profiles, owner, held))
        raise
    return True


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
