"""The end of the capture path: sample, mask, encode and hand an event to the queue.

Shared by incoming capture (the middleware) and outgoing capture, so both obey
the same sampling, masking, size and drop rules.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from typing import Any, Dict, Optional

from . import jsoncodec
from .bodies import truncation_marker
from .callbacks import CallbackError
from .diagnostics import problems
from .masking import MaskingError, apply_mask
from .queue_writer import QueueWriter, current_pid, writer_for
from .sampling import keep, weight_for
from .settings import Settings
from .sync_bridge import is_async_callable, run_on_private_loop, run_without_loop, running_loop, spawn

# Moesif rejects events over 1 MB; keep a margin for the batch framing.
MAX_EVENT_CHARS = 1_000_000 - 4_096
# How long DURABILITY="strict" holds a response back waiting for the commit
# before giving up (the queue file is locked or broken: serving beats waiting).
STRICT_COMMIT_TIMEOUT = 5.0


class EventPipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._writer: Optional[QueueWriter] = None
        self._writer_pid = 0

    @property
    def writer(self) -> QueueWriter:
        # Looked up per process: after a fork the parent's writer is not ours.
        pid = current_pid()
        if self._writer is None or self._writer_pid != pid or self._writer.closed:
            self._writer = writer_for(self.settings.queue_path, self.settings.event_queue_size,
                                      self.settings.application_id)
            self._writer_pid = pid
        return self._writer

    def sampling_rate(
        self, *, verb: str, route: str, ip_address: Optional[str], status: Optional[int],
        user_id: Optional[str], company_id: Optional[str],
    ) -> float:
        sampling = self.writer.shared.sampling
        if sampling is None:
            return 100.0
        return sampling.rate(
            verb=verb, route=route, ip_address=ip_address, status=status, user_id=user_id, company_id=company_id
        )

    @staticmethod
    def sampled_in(rate: float) -> bool:
        return rate >= 100 or keep(rate, random.random())

    @staticmethod
    def weight(rate: float) -> int:
        return weight_for(rate)

    def drop(self, reason_key: str, message: str, *args: Any) -> None:
        """Count an event lost on our side, and say why (once, not per request)."""
        self.writer.count_drop()
        problems.report(reason_key, message, *args)

    def internal_error(self, reason_key: str, message: str) -> None:
        """Count a drop and log the exception being handled (once per interval).

        For our own bugs: counting must not raise in turn, since the writer
        itself may be what failed.
        """
        try:
            self.writer.count_drop()
        except Exception:
            pass
        problems.report(reason_key, message, level=logging.ERROR, exc_info=True)

    async def persist(self, event: Dict[str, Any], writer: Optional[QueueWriter] = None, *, strict: bool = False) -> bool:
        """Mask, encode and queue `event`; True once it is queued (strict: committed)."""
        writer = writer or self.writer
        if self.settings.mask_event_model is not None:
            event = await apply_mask(self.settings.mask_event_model, event)
        text = encode_event(event)
        if text is None:
            self.drop("too-large", "moesifasgi: an event stayed over Moesif's 1 MB limit without its bodies; dropped")
            return False
        row = (str(event["transaction_id"]), time.time(), text)
        if not strict:
            return writer.submit(row)
        loop = asyncio.get_running_loop()
        committed: asyncio.Future = loop.create_future()

        def done(ok: bool) -> None:
            loop.call_soon_threadsafe(_resolve, committed, ok)

        if not writer.submit(row, done):
            return False
        try:
            return await asyncio.wait_for(committed, STRICT_COMMIT_TIMEOUT)
        except asyncio.TimeoutError:
            problems.report(
                "strict-timeout",
                "moesifasgi: DURABILITY=strict waited %.0f s for the queue file; responding without the commit",
                STRICT_COMMIT_TIMEOUT,
            )
            return False

    def persist_sync(self, event: Dict[str, Any]) -> bool:
        """persist() for callers with no event loop of their own (outgoing calls from
        sync code and threads); never strict.

        A plain MASK_EVENT_MODEL is called right here. An `async def` one runs to
        completion on a private event loop when this thread runs none; in the thread
        of a running loop, waiting for it would block that loop, so a task on that
        loop persists the event instead (True then means scheduled, and the task
        reports its own failures). Otherwise raises what persist() raises.
        """
        mask = self.settings.mask_event_model
        if mask is None or not is_async_callable(mask):
            return run_without_loop(self.persist(event))
        loop = running_loop()
        if loop is None:
            return run_on_private_loop(self.persist(event))
        spawn(loop, self._persist_reporting(event))
        return True

    async def _persist_reporting(self, event: Dict[str, Any]) -> None:
        try:
            await self.persist(event)
        except CallbackError as exc:
            self.drop(f"callback-{exc.name}", "moesifasgi: %s; the event was dropped", exc)
        except MaskingError as exc:
            self.drop("masking", "moesifasgi: %s", exc)
        except Exception:
            self.writer.count_drop()
            problems.report("internal", "moesifasgi: unexpected error while recording a call; event dropped",
                            level=logging.ERROR, exc_info=True)


def _resolve(future: asyncio.Future, ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


_encode = jsoncodec.dumps


def encode_event(event: Dict[str, Any]) -> Optional[str]:
    """The event's JSON text, its bodies replaced by markers if it is too large."""
    text = _encode(event)
    if len(text) <= MAX_EVENT_CHARS:
        return text
    for part in ("response", "request"):
        section = event.get(part)
        if isinstance(section, dict) and section.get("body") is not None:
            size = len(_encode(section["body"]))
            section["body"] = base64.b64encode(truncation_marker(0, size)).decode("ascii")
            section["transfer_encoding"] = "base64"
            text = _encode(event)
            if len(text) <= MAX_EVENT_CHARS:
                return text
    return None
