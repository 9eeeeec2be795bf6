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
from typing import Any, Dict, List, Optional, Tuple

from . import jsoncodec
from .bodies import truncation_marker
from .callbacks import CallbackTimeout
from .diagnostics import problems
from .event_builder import route_of
from .field_masks import maskers_for
from .masking import MaskingError, apply_mask
from .per_process import current_pid
from .queue_writer import QueueWriter
from .writers import writer_for
from .sampling import keep, weight_for
from .settings import Settings
from .shared_state import SharedState

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
        # None when there is nothing to mask: persist() then pays one test.
        self._incoming_masker, self._outgoing_masker = maskers_for(settings)

    @property
    def writer(self) -> QueueWriter:
        # Looked up per process: after a fork the parent's writer is not ours.
        writer = self._writer
        pid = current_pid()
        if writer is not None and self._writer_pid == pid and not writer._stopping:
            return writer  # read a few times per call: attribute tests only
        if self._writer is None or self._writer_pid != pid or self._writer.closed:
            self._writer = writer_for(self.settings.queue_path, self.settings.event_queue_size,
                                      self.settings.application_id)
            self._writer_pid = pid
        return self._writer

    @property
    def remote(self) -> SharedState:
        """Moesif's config and governance rules as last stored in the queue file.

        This process's snapshot for the queue file (``shared_state.for_queue``); the
        writer, started here if need be, is what keeps it fresh.
        """
        return self.writer.shared

    def sample(
        self, *, verb: str, route: Optional[str] = None, ip_address: Optional[str], status: Optional[int],
        user_id: Optional[str], company_id: Optional[str], uri: Optional[str] = None,
    ) -> Optional[int]:
        """The event's weight under Moesif's sampling config, or None when it is sampled out.

        The rules match on the route: give it, or the full `uri` to take it from
        (only when there are rules to match).
        """
        sampling = self.writer.shared.sampling
        if sampling is None:
            return 1
        if route is None:
            route = route_of(uri or "/")
        rate = sampling.rate(
            verb=verb, route=route, ip_address=ip_address, status=status, user_id=user_id, company_id=company_id
        )
        if rate < 100 and not keep(rate, random.random()):
            return None
        return weight_for(rate)

    def drop(self, reason: str, message: str, *args: Any) -> None:
        """Count an event lost on our side, by reason, and say why (once, not per request)."""
        self.writer.count_drop(reason=reason)
        problems.report(reason, message, *args)

    def problem(self, reason: str, message: str, *args: Any) -> None:
        """Count, by reason, a problem the event survived (a field left out, a stand-in
        value), and say so once per interval."""
        try:
            self.writer.count_problem(reason)
        except Exception:
            pass
        problems.report(reason, message, *args)

    def internal_error(self, reason_key: str, message: str) -> None:
        """Count a drop and log the exception being handled (once per interval).

        The one guard for our own bugs, incoming and outgoing: counting must not
        raise in turn, since the writer itself may be what failed.
        """
        try:
            self.writer.count_drop(reason=reason_key)
        except Exception:
            pass
        problems.report(reason_key, message, level=logging.ERROR, exc_info=True)

    async def persist(
        self, event: Dict[str, Any], *, strict: bool = False, deadline: Optional[float] = None,
    ) -> bool:
        """Mask, encode and queue `event`; True once it is queued (strict: committed).

        A MASK_EVENT_MODEL that raises, times out or returns something else never
        lets the unmasked event out: a minimal event (no headers, no bodies, no
        metadata) is queued in its place and the failure counted.
        """
        mask = self.settings.mask_event_model
        if mask is None and not strict:
            return self.persist_now(event)
        writer = self.writer
        # The declarative masks first, so MASK_EVENT_MODEL (and any failure report) sees the masked event.
        masker = self._outgoing_masker if event.get("direction") == "Outgoing" else self._incoming_masker
        if masker is not None:
            masker.apply(event)
        if mask is not None:
            try:
                event = await apply_mask(mask, event, deadline)
            except Exception as exc:
                self.problem(
                    "mask-failed", "moesifasgi: MASK_EVENT_MODEL failed (%s); a minimal event without headers, "
                    "bodies or metadata was recorded instead", _describe(exc))
                event = minimal_event(event)
        row = self._row(event)
        if row is None:
            return False
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

    def persist_now(self, event: Dict[str, Any]) -> bool:
        """persist() without MASK_EVENT_MODEL and not strict: nothing to wait for, so
        no coroutine (the common case, once per call on the app's loop)."""
        masker = self._outgoing_masker if event.get("direction") == "Outgoing" else self._incoming_masker
        if masker is not None:
            masker.apply(event)
        try:
            text = _encode(event)
        except (TypeError, ValueError, RecursionError):
            text = None  # encode() below repairs it
        if text is None or len(text) > MAX_EVENT_CHARS:
            row = self._row(event)
            return row is not None and self.writer.submit(row)
        return self.writer.submit((str(event["transaction_id"]), time.time(), text))

    def _row(self, event: Dict[str, Any]) -> Optional[Tuple[str, float, str]]:
        text = self.encode(event)
        if text is None:
            self.drop("too-large", "moesifasgi: an event stayed over Moesif's 1 MB limit without its bodies; dropped")
            return None
        return (str(event["transaction_id"]), time.time(), text)

    def encode(self, event: Dict[str, Any]) -> Optional[str]:
        """encode_event(), with values that are not valid JSON replaced by marked stand-ins."""
        try:
            return encode_event(event)
        except (TypeError, ValueError, RecursionError):
            pass
        for reason, what in _repair(event):
            self.problem(reason, "moesifasgi: %s was not valid JSON; it was stored in a marked, stringified form", what)
        return encode_event(event)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CallbackTimeout):
        return "it did not finish within CALLBACK_TIMEOUT"
    if isinstance(exc, MaskingError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _path_only(uri: Any) -> str:
    # The query string may carry what the mask was meant to hide.
    text = str(uri or "/")
    for mark in ("?", "#"):
        cut = text.find(mark)
        if cut >= 0:
            text = text[:cut]
    return text


def minimal_event(event: Dict[str, Any]) -> Dict[str, Any]:
    """What is safe to record of an event its mask could not clean: the call's shape
    and ids, nothing the app or its client wrote (headers, bodies, metadata)."""
    request = event.get("request") if isinstance(event.get("request"), dict) else {}
    response = event.get("response") if isinstance(event.get("response"), dict) else {}
    minimal: Dict[str, Any] = {
        "request": {
            "time": request.get("time"),
            "uri": _path_only(request.get("uri")),
            "verb": request.get("verb", "GET"),
            "headers": {},
        },
        "response": {"time": response.get("time"), "status": response.get("status", 500), "headers": {}},
        "direction": event.get("direction", "Incoming"),
        "transaction_id": event.get("transaction_id"),
    }
    for name in ("user_id", "company_id", "weight", "blocked_by"):
        if event.get(name) is not None:
            minimal[name] = event[name]
    return minimal


_MARK = "moesifasgi: not valid JSON, stored as text"


def _stand_in(value: Any) -> Dict[str, Any]:
    try:
        text = repr(value)
    except Exception:  # a value whose repr fails or recurses too deep
        text = f"<{type(value).__name__}>"
    return {"_moesifasgi": _MARK, "type": type(value).__name__, "text": text[:4096]}


def _json_ok(value: Any) -> bool:
    try:
        _encode(value)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def _repair(event: Dict[str, Any]) -> List[Tuple[str, str]]:
    """Replace, in place, each part of `event` that cannot be encoded as JSON; say which."""
    repaired: List[Tuple[str, str]] = []
    if "metadata" in event and not _json_ok(event["metadata"]):
        event["metadata"] = _stand_in(event["metadata"])
        repaired.append(("metadata-not-json", "the metadata (GET_METADATA)"))
    for part in ("request", "response"):
        section = event.get(part)
        if not isinstance(section, dict):
            continue
        for key in list(section):
            if _json_ok(section[key]):
                continue
            if key == "body":
                text = jsoncodec.dumps(_stand_in(section["body"]))
                section["body"] = base64.b64encode(text.encode("utf-8")).decode("ascii")
                section["transfer_encoding"] = "base64"
            else:
                section[key] = _stand_in(section[key])
            repaired.append((f"{part}-{key}-not-json", f"the {part} {key}"))
    for key in list(event):
        if key not in ("request", "response") and not _json_ok(event[key]):
            event[key] = _stand_in(event[key])
            repaired.append((f"{key}-not-json", f"the event's {key}"))
    return repaired


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
