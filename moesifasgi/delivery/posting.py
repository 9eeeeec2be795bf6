"""Posting one claimed batch to Moesif and acting on the answer.

- 2xx: delete the rows (still claimed by us) and count them as sent.
- Transient failures (connection errors, timeouts, 408, 429, 5xx): give the rows
  back and pause every worker of this flusher for a backoff delay that honours
  Retry-After; the events stay queued.
- 401/402/403: give the rows back, log one clear error, and send nothing until a
  probe a few minutes later.
- 400/413: split the batch in halves until the bad events are alone; an event
  rejected on its own goes to the dead letters with the status and reason.
  Other 4xx (404 from a wrong BASE_URI...) are a configuration problem, not a bad
  event: they are retried with backoff rather than dead-lettering everything.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..diagnostics import ProblemLog
from ..storage import queue_store as qs
from .async_db import AsyncDB
from .backoff import Backoff
from .client import AUTH, REJECT, RETRY, TOO_LARGE, MoesifClient, PostResult
from .outcomes import PostOutcome
from .splitting import post_isolating

logger = logging.getLogger(__name__)

AUTH_PROBE_INTERVAL = 300.0
_TOO_OLD_REASON = "older than 30 days: Moesif accepts events up to 30 days old"
_STATE_WRITE_INTERVAL = 1.0  # last_success_at / last_error: at most one write a second


@dataclass
class Outcome:
    """What became of one claimed batch."""
    sent: int = 0
    dead_lettered: int = 0
    released: List[int] = field(default_factory=list)  # ids given back after an error
    released_events: Dict[int, int] = field(default_factory=dict)  # those ids -> the events each holds
    acked: List[int] = field(default_factory=list)
    error: Optional[PostOutcome] = None  # the failed post's, if any
    to_ack: List[int] = field(default_factory=list)  # accepted, left for the caller to delete
    to_ack_events: int = 0  # the events those rows hold
    success_at: Optional[float] = None  # to record with that deferred ack


class Delivery:
    def __init__(self, db: AsyncDB, client: MoesifClient, owner: str, *,
                 backoff: Optional[Backoff] = None, auth_probe_interval: float = AUTH_PROBE_INTERVAL,
                 max_event_age: float = qs.MAX_EVENT_AGE_S,
                 on_config_etag: Optional[Callable[[str], None]] = None) -> None:
        self.db = db
        self.client = client
        self.owner = owner
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.auth_probe_interval = auth_probe_interval
        self.max_event_age = max_event_age
        self.on_config_etag = on_config_etag
        self.paused_until = 0.0  # time.monotonic()
        self.auth_blocked = False
        self.errors = 0  # consecutive failed posts, reset by a success
        self.failed_posts = 0  # every failed post, for the daemon's periodic log line
        # Failed posts by outcome (retry, auth, reject, too_large), for the daemon's
        # metrics; every key exists up front so a reader on another thread can copy it.
        self.failures = {RETRY: 0, AUTH: 0, REJECT: 0, TOO_LARGE: 0}
        self.last_failure: Optional[str] = None  # what the last failed post said, for drain's last line
        self._problems = ProblemLog(logger, interval=None)  # a failing Moesif: one line per outage
        self._last_success_write = 0.0
        self._last_error_write = 0.0
        self._too_old = 0  # events dead-lettered as too old since the last line about them
        self._too_old_log = ProblemLog(logger, interval=60.0)  # a stale backlog: one line a minute
        self._apps: Dict[int, str] = {}  # apps.id -> application id, read when a new one shows up

    def pause_remaining(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    async def deliver(self, rows: Sequence[qs.Row], *, defer_ack: bool = False) -> Outcome:
        """Post `rows`; with `defer_ack`, a batch accepted whole is not deleted here but
        returned in `to_ack`, for the caller to delete together with its next claim."""
        out = Outcome()
        cutoff = time.time() - self.max_event_age
        old = [r.id for r in rows if r.created_at < cutoff]
        if old:
            out.dead_lettered += await self.db.run(qs.dead_letter, self.owner, old, None, _TOO_OLD_REASON)
            self._too_old += len(old)
            if self._too_old_log.report("too-old", "moved %d events older than 30 days to the dead letters",
                                        self._too_old, note_repeats=False):
                self._too_old = 0
            rows = [r for r in rows if r.created_at >= cutoff]
        application_id = await self._application_id(rows[0].app) if rows else None

        async def post(part: List[qs.Row]) -> PostResult:
            result = await self.client.post_events([r.body for r in part], application_id)
            if result.config_etag and self.on_config_etag is not None:
                self.on_config_etag(result.config_etag)
            return result

        async def accepted(part: List[qs.Row], whole: bool) -> None:
            await self._accepted(part, out, defer=defer_ack and whole)

        async def rejected(row: qs.Row, result: PostResult) -> None:
            await self._reject_alone(row, result, out)

        async def split(row: qs.Row) -> List[qs.Row]:
            # A segment refused whole (400/413) is cut into its events, once,
            # to find the one Moesif refuses; the rest is accepted as before.
            return [row] if row.count <= 1 else await self.db.run(qs.split_segment, self.owner, row.id)

        failure, unsent = await post_isolating(rows, post, accepted=accepted, rejected=rejected, split=split)
        if failure is not None:
            ids = [r.id for r in unsent]
            await self.db.run(qs.release, self.owner, ids)
            out.released.extend(ids)
            out.released_events.update((r.id, r.count) for r in unsent)
            out.error = failure.outcome
            await self._failed(failure)
        return out

    async def _application_id(self, app: Optional[int]) -> Optional[str]:
        """The application id a batch of app `app` is posted under (None: the client's)."""
        if app is None:
            return None
        if app not in self._apps:
            self._apps = await self.db.run(qs.application_ids)
        return self._apps.get(app)

    async def _accepted(self, part: List[qs.Row], out: Outcome, defer: bool) -> None:
        now = time.time()
        success_at = None
        if now - self._last_success_write >= _STATE_WRITE_INTERVAL:
            self._last_success_write = now
            success_at = now
        ids = [r.id for r in part]
        if defer:
            out.to_ack, out.success_at = ids, success_at
            out.to_ack_events = sum(r.count for r in part)
        else:
            out.sent += await self.db.run(qs.ack, self.owner, ids, success_at=success_at)
        out.acked.extend(ids)
        if self._problems.clear("post") or self.auth_blocked:
            logger.info("Moesif accepts events again after %d failed posts", self.errors)
        self.auth_blocked = False
        self.errors = 0
        self.backoff.reset()

    def profiles_accepted(self) -> None:
        """Moesif took profiles: it is reachable and our key works, as for events."""
        if self.auth_blocked or self.errors:
            logger.info("Moesif accepts posts again after %d failed posts", self.errors)
        self._problems.clear("post")
        self.auth_blocked = False
        self.errors = 0
        self.backoff.reset()

    async def profiles_failed(self, outcome: PostOutcome, status: Optional[int], retry_after: Optional[float]) -> None:
        """A failed profile post pauses every worker like a failed event post (backoff, auth probe)."""
        await self._failed(PostResult(outcome, status=status, retry_after=retry_after,
                                      error=f"profiles: HTTP {status}" if status else f"profiles: {outcome}"))

    async def _reject_alone(self, row: qs.Row, result: PostResult, out: Outcome) -> None:
        reason = result.error or f"HTTP {result.status}"
        out.dead_lettered += await self.db.run(qs.dead_letter, self.owner, [row.id], result.status, reason)
        logger.warning("Moesif rejected event %s (%s); it was moved to the dead letters", row.transaction_id, reason)
        self.failed_posts += 1
        self._count_failure(result)
        await self._record_error(result)

    def _count_failure(self, result: PostResult) -> None:
        kind = result.outcome if result.outcome in self.failures else RETRY
        self.failures[kind] += 1
        self.last_failure = result.error or (f"HTTP {result.status}" if result.status else result.outcome)

    async def _failed(self, result: PostResult) -> None:
        self.errors += 1
        self.failed_posts += 1
        self._count_failure(result)
        now = time.monotonic()
        if result.outcome == AUTH:
            self.paused_until = max(self.paused_until, now + self.auth_probe_interval)
            if not self.auth_blocked:
                logger.error(
                    "Moesif refused our application id (%s): check APPLICATION_ID and the subscription. "
                    "Events are kept in the queue; sending is paused and probed again every %.0f s",
                    result.error or result.status, self.auth_probe_interval)
            self.auth_blocked = True
        else:
            # Batches failing together in one outage share one delay, so that the
            # backoff grows per outage and not per batch in flight.
            if now >= self.paused_until:
                delay = self.backoff.next_delay(result.retry_after)
                self.paused_until = now + delay
            elif result.retry_after:
                self.paused_until = max(self.paused_until, now + result.retry_after)
            if not self._problems.report("post", "posting to Moesif failed (%s); what was not sent stays "
                                         "queued, retrying with backoff", result.error or result.status):
                logger.debug("post failed again (%s); next try in %.1f s", result.error, self.pause_remaining())
        await self._record_error(result)

    async def _record_error(self, result: PostResult) -> None:
        now = time.time()
        if now - self._last_error_write < _STATE_WRITE_INTERVAL:
            return
        self._last_error_write = now
        value = json.dumps({"at": now, "outcome": result.outcome, "status": result.status, "error": result.error})
        try:
            await self.db.run(qs.kv_set, qs.KV_LAST_ERROR, value)
        except Exception as exc:  # bookkeeping only: never lose the batch over it
            logger.debug("cannot record last_error: %s", exc)
