"""From a finished outgoing call to a queued event: callbacks, sampling, masking.

One recorder per install, shared by every patched library. Its entry points
never raise: whatever goes wrong on our side is counted as a dropped event and
logged once (see diagnostics.problems), and the caller's call goes on as if we
were not there.
"""
from __future__ import annotations

import contextvars
import logging
from typing import Any, Dict, Mapping, Optional
from urllib.parse import urlsplit

from ..callbacks import CallbackError, invoke
from ..event_builder import route_of
from ..masking import MaskingError
from ..pipeline import EventPipeline
from ..settings import Settings
from ..sync_bridge import WouldBlock, is_async_callable, run_on_private_loop, run_without_loop, running_loop, spawn
from .event import OutgoingCall, build_event

__all__ = ["OutgoingRecorder", "in_recorder"]

logger = logging.getLogger(__name__)

# Set while our own code runs (the user's callbacks included): a call made from
# there is ours, not the app's, and capturing it could recurse without end.
_in_recorder: contextvars.ContextVar[bool] = contextvars.ContextVar("moesifasgi_in_recorder", default=False)

# Headers that mark a call as Moesif's own (our flusher sends the first; other
# Moesif SDKs in the same process send either).
_MOESIF_HEADERS = ("x-moesif-application-id", "x-moesif-sdk")


def _loggable(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    except ValueError:
        return "(unparseable URL)"


def in_recorder() -> bool:
    return _in_recorder.get()


class OutgoingRecorder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pipeline = EventPipeline(settings)
        s = settings
        self.log_body = s.log_body_outgoing
        self.body_limit = s.max_body_bytes
        # With only plain callbacks, recording never waits and needs no event loop.
        self.may_await = any(
            is_async_callable(f)
            for f in (s.skip_outgoing, s.identify_user_outgoing, s.identify_company_outgoing,
                      s.get_session_token_outgoing, s.get_metadata_outgoing, s.mask_event_model)
        )
        self._base = s.base_uri.rstrip("/").lower()

    # -- which calls to capture ---------------------------------------------------------

    def wants(self, url: str, headers: Mapping[str, Any]) -> bool:
        """False for calls made by our own code and for calls to Moesif.

        May raise for a request that is not what the library expects; the
        patches treat that as "not captured" and let the library reply.
        """
        if _in_recorder.get():
            return False
        for name in _MOESIF_HEADERS:
            if name in headers:  # both libraries' header maps ignore case
                return False
        base = self._base
        if url[: len(base)].lower() == base and url[len(base): len(base) + 1] in ("", "/", "?", "#"):
            return False
        if "moesif.net" not in url.lower():  # spares parsing nearly every URL
            return True
        host = (urlsplit(url).hostname or "").lower()
        return not (host == "moesif.net" or host.endswith(".moesif.net"))

    # -- recording ----------------------------------------------------------------------

    def record(self, call: OutgoingCall) -> None:
        """Record from any thread, with or without a running event loop. Never raises."""
        token = _in_recorder.set(True)
        try:
            if not self.may_await:
                event = run_without_loop(self._build(call))
                if event is not None:
                    self.pipeline.persist_sync(event)
                return
            loop = running_loop()
            if loop is None:
                run_on_private_loop(self._record(call))
            else:
                # Waiting here for an async callback would block the loop this
                # thread runs (a sync call inside a coroutine, or a cancellation):
                # the loop finishes the recording instead.
                spawn(loop, self.arecord(call))
        except Exception as exc:
            self._failed(exc)
        finally:
            _in_recorder.reset(token)

    async def arecord(self, call: OutgoingCall) -> None:
        """Record from a coroutine; async callbacks are awaited right here. Never raises."""
        if not self.may_await:
            self.record(call)
            return
        token = _in_recorder.set(True)
        try:
            await self._record(call)
        except Exception as exc:
            self._failed(exc)
        finally:
            _in_recorder.reset(token)

    async def _record(self, call: OutgoingCall) -> None:
        event = await self._build(call)
        if event is not None:
            await self.pipeline.persist(event)

    async def _build(self, call: OutgoingCall) -> Optional[Dict[str, Any]]:
        s = self.settings
        request, response = call.request, call.response
        if s.skip_outgoing is not None and await invoke("SKIP_OUTGOING", s.skip_outgoing, request, response):
            return None
        user_id = company_id = None
        if s.identify_user_outgoing is not None:
            user_id = await invoke("IDENTIFY_USER_OUTGOING", s.identify_user_outgoing, request, response)
        if s.identify_company_outgoing is not None:
            company_id = await invoke("IDENTIFY_COMPANY_OUTGOING", s.identify_company_outgoing, request, response)
        user_id = None if user_id is None else str(user_id)
        company_id = None if company_id is None else str(company_id)

        rate = 100.0
        if self.pipeline.writer.shared.sampling is not None:
            rate = self.pipeline.sampling_rate(
                verb=call.method, route=route_of(call.url), ip_address=None, status=call.status,
                user_id=user_id, company_id=company_id,
            )
            if not self.pipeline.sampled_in(rate):
                return None

        session_token = metadata = None
        if s.get_session_token_outgoing is not None:
            session_token = await invoke("GET_SESSION_TOKEN_OUTGOING", s.get_session_token_outgoing, request, response)
        if s.get_metadata_outgoing is not None:
            metadata = await invoke("GET_METADATA_OUTGOING", s.get_metadata_outgoing, request, response)
        event = build_event(
            call,
            body_limit=self.body_limit,
            api_version=s.api_version,
            user_id=user_id,
            company_id=company_id,
            session_token=None if session_token is None else str(session_token),
            metadata=metadata,
            weight=self.pipeline.weight(rate),
        )
        if s.debug:
            # Host and path only: the query string and user info may hold credentials.
            logger.debug("moesifasgi: queueing outgoing event %s %s -> %s", call.method, _loggable(call.url),
                         call.status)
        return event

    # -- our own failures ---------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, CallbackError):
            self.pipeline.drop(f"callback-{exc.name}", "moesifasgi: %s; the outgoing event was dropped", exc)
        elif isinstance(exc, MaskingError):
            self.pipeline.drop("masking", "moesifasgi: %s", exc)
        elif isinstance(exc, WouldBlock):
            self.pipeline.drop("callback-awaitable", "moesifasgi: %s; the outgoing event was dropped", exc)
        else:
            self.internal_error()

    def internal_error(self) -> None:
        """Count a drop and log the exception being handled (once per interval)."""
        self.pipeline.internal_error(
            "outgoing-internal", "moesifasgi: unexpected error while recording an outgoing call; event dropped")
