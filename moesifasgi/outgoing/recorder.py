"""From a finished outgoing call to a queued event: callbacks, sampling, masking.

One recorder per install, shared by every patched library. Its entry points
never raise: whatever goes wrong on our side is counted as a dropped event and
logged once (see diagnostics.problems), and the caller's call goes on as if we
were not there.
"""
from __future__ import annotations

import contextvars
import logging
from typing import Any, Dict, Mapping
from urllib.parse import urlsplit

from ..pipeline import EventPipeline
from ..recording import CallbackSet, Identity, RecordingSequence
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


def in_recorder() -> bool:
    return _in_recorder.get()


class OutgoingRecorder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pipeline = EventPipeline(settings)
        s = settings
        self.log_body = s.log_body_outgoing
        self.body_limit = s.max_body_bytes
        callbacks = CallbackSet("_OUTGOING", s.skip_outgoing, s.identify_user_outgoing, s.identify_company_outgoing,
                                s.get_session_token_outgoing, s.get_metadata_outgoing)
        self.sequence = RecordingSequence(self.pipeline, callbacks, s.callback_timeout)
        # With only plain callbacks, recording never waits and needs no event loop.
        self.may_await = callbacks.any_async() or is_async_callable(s.mask_event_model)
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
                run_without_loop(self._record(call))
                return
            loop = running_loop()
            if loop is None:
                run_on_private_loop(self._record(call))
            else:
                # Waiting here for an async callback would block the loop this
                # thread runs (a sync call inside a coroutine, or a cancellation):
                # the loop finishes the recording instead.
                spawn(loop, self.arecord(call))
        except WouldBlock as exc:
            self.pipeline.drop("callback-awaitable", "moesifasgi: %s; the outgoing event was dropped", exc)
        except Exception:
            self.internal_error()
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
        finally:
            _in_recorder.reset(token)

    async def _record(self, call: OutgoingCall) -> bool:
        s = self.settings

        def build(identity: Identity) -> Dict[str, Any]:
            return build_event(
                call,
                body_limit=self.body_limit,
                api_version=s.api_version,
                user_id=identity.user_id,
                company_id=identity.company_id,
                session_token=identity.session_token,
                metadata=identity.metadata,
                weight=identity.weight,
            )

        return await self.sequence.record(
            lambda: (call.request, call.response), build,
            verb=call.method, uri=call.url, ip_address=None, status=call.status,
        )

    def internal_error(self) -> None:
        """Count a drop and log the exception being handled (once per interval)."""
        self.pipeline.internal_error(
            "outgoing-internal", "moesifasgi: unexpected error while recording an outgoing call; event dropped")
