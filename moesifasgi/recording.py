"""The one recording sequence, for incoming and outgoing calls alike.

SKIP, IDENTIFY_USER, IDENTIFY_COMPANY, sampling, GET_SESSION_TOKEN,
GET_METADATA, then the event is built, masked, encoded and queued. The fact of
the call is never lost to the user's code: a callback that raises or runs past
the call's deadline leaves its field out (SKIP: the call is not skipped), and
the problem is counted by reason and logged once per interval. Our own bugs
meet the one guard at the end: counted as a drop, logged once, never raised.
"""
from __future__ import annotations

import logging
import time
from inspect import isawaitable
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from .callbacks import CallbackTimeout, settle
from .field_masks import loggable_url
from .pipeline import EventPipeline
from .sync_bridge import is_async_callable

__all__ = ["CallbackSet", "Identity", "RecordingSequence"]

logger = logging.getLogger(__name__)

_MISSING = object()
# What callbacks usually return: never awaitable, so inspect.isawaitable (an ABC
# check) is skipped for them.
_PLAIN = frozenset({type(None), bool, str, int, float, dict, list})


class CallbackSet(NamedTuple):
    """The data callbacks of one direction and the names they are reported by."""

    suffix: str  # "" for incoming calls, "_OUTGOING" for outgoing ones
    skip: Optional[Callable[..., Any]]
    identify_user: Optional[Callable[..., Any]]
    identify_company: Optional[Callable[..., Any]]
    get_session_token: Optional[Callable[..., Any]]
    get_metadata: Optional[Callable[..., Any]]

    def any(self) -> bool:
        return any(f is not None for f in self[1:])

    def any_async(self) -> bool:
        return any(is_async_callable(f) for f in self[1:])


class Identity(NamedTuple):
    user_id: Optional[str]
    company_id: Optional[str]
    session_token: Optional[str]
    metadata: Any
    weight: Optional[int]


class RecordingSequence:
    def __init__(self, pipeline: EventPipeline, callbacks: CallbackSet, timeout: float) -> None:
        self.pipeline = pipeline
        self.callbacks = callbacks
        self.timeout = timeout
        self.direction = "outgoing " if callbacks.suffix else ""
        self._needs_arguments = callbacks.any()
        self._names = tuple(name + callbacks.suffix for name in
                            ("SKIP", "IDENTIFY_USER", "IDENTIFY_COMPANY", "GET_SESSION_TOKEN", "GET_METADATA"))

    def deadline(self) -> float:
        """When this call's callbacks (MASK_EVENT_MODEL included) must have finished."""
        return time.monotonic() + self.timeout

    # Callbacks are called inline, each in its own try (a raise leaves _MISSING):
    # plain functions, the common case, never make a coroutine or an extra frame,
    # on the app's event loop where each adds up.

    async def _settle(self, name: str, result: Any, deadline: float) -> Any:
        """An awaitable callback result, or _MISSING when it raised or ran out of time."""
        try:
            return await settle(result, deadline)
        except CallbackTimeout:
            self.pipeline.problem(
                f"callback-timeout:{name}",
                "moesifasgi: %s did not finish within CALLBACK_TIMEOUT (%.3g s); the %sevent was recorded without it",
                name, self.timeout, self.direction)
        except Exception as exc:
            self._raised(name, exc)
        return _MISSING

    def _raised(self, name: str, exc: Exception) -> None:
        self.pipeline.problem(
            f"callback-raised:{name}",
            "moesifasgi: %s raised %s: %s; the %sevent was recorded without it",
            name, type(exc).__name__, exc, self.direction)

    async def identify(
        self, request: Any, response: Any, *, verb: str, uri: str, ip_address: Optional[str],
        status: Optional[int], deadline: float, fallback_user_id: Optional[Callable[[], Optional[str]]] = None,
    ) -> Optional[Identity]:
        """Run the data callbacks and sampling; None when the call is skipped or sampled out."""
        c = self.callbacks
        names = self._names
        if c.skip is not None:
            try:
                skipped = c.skip(request, response)
            except Exception as exc:
                self._raised(names[0], exc)
                skipped = _MISSING
            if type(skipped) not in _PLAIN and isawaitable(skipped):
                skipped = await self._settle(names[0], skipped, deadline)
            if skipped is not _MISSING and skipped:
                return None
        user_id = company_id = session_token = metadata = None
        if c.identify_user is not None:
            try:
                value = c.identify_user(request, response)
            except Exception as exc:
                self._raised(names[1], exc)
                value = _MISSING
            if type(value) not in _PLAIN and isawaitable(value):
                value = await self._settle(names[1], value, deadline)
            user_id = None if value is _MISSING else value
        if not user_id and fallback_user_id is not None:
            user_id = fallback_user_id()
        if c.identify_company is not None:
            try:
                value = c.identify_company(request, response)
            except Exception as exc:
                self._raised(names[2], exc)
                value = _MISSING
            if type(value) not in _PLAIN and isawaitable(value):
                value = await self._settle(names[2], value, deadline)
            company_id = None if value is _MISSING else value
        user_id = None if user_id is None else str(user_id)
        company_id = None if company_id is None else str(company_id)

        weight = self.pipeline.sample(
            verb=verb, uri=uri, ip_address=ip_address, status=status, user_id=user_id, company_id=company_id,
        )
        if weight is None:
            return None  # sampled out

        if c.get_session_token is not None:
            try:
                value = c.get_session_token(request, response)
            except Exception as exc:
                self._raised(names[3], exc)
                value = _MISSING
            if type(value) not in _PLAIN and isawaitable(value):
                value = await self._settle(names[3], value, deadline)
            session_token = None if value is _MISSING or value is None else str(value)
        if c.get_metadata is not None:
            try:
                value = c.get_metadata(request, response)
            except Exception as exc:
                self._raised(names[4], exc)
                value = _MISSING
            if type(value) not in _PLAIN and isawaitable(value):
                value = await self._settle(names[4], value, deadline)
            metadata = None if value is _MISSING else value
        return Identity(user_id, company_id, session_token, metadata, weight)

    async def record(
        self, arguments: Callable[[], Tuple[Any, Any]], build: Callable[[Identity], Dict[str, Any]], *,
        verb: str, uri: str, ip_address: Optional[str], status: Optional[int], strict: bool = False,
        fallback_user_id: Optional[Callable[[], Optional[str]]] = None,
    ) -> bool:
        """The whole sequence for one call; True when its event was queued. Never raises.

        `arguments()` gives the (request, response) the callbacks receive; `build`
        turns the callbacks' results into the event.
        """
        try:
            deadline = time.monotonic() + self.timeout
            request, response = arguments() if self._needs_arguments else (None, None)
            identity = await self.identify(
                request, response, verb=verb, uri=uri, ip_address=ip_address, status=status,
                deadline=deadline, fallback_user_id=fallback_user_id,
            )
            if identity is None:
                return False
            event = build(identity)
            if self.pipeline.settings.debug:
                # Method, host and path only: the query string and user info may hold
                # what a mask removes (the event itself is masked only in persist()).
                logger.debug("moesifasgi: queueing %sevent %s %s -> %s", self.direction, verb, loggable_url(uri),
                             status)
            pipeline = self.pipeline
            if strict or pipeline.settings.mask_event_model is not None:
                return await pipeline.persist(event, strict=strict, deadline=deadline)
            return pipeline.persist_now(event)
        except Exception:
            self.pipeline.internal_error(
                "outgoing-internal" if self.callbacks.suffix else "internal",
                f"moesifasgi: unexpected error while recording an {self.direction or 'incoming '}call; event dropped",
            )
            return False
