"""Streamed responses: record what the caller consumed, when the caller is done.

Done means read to the end, closed, failed midway, or let go without either
(then at garbage collection). Bytes are copied as they pass on their way to the
caller, up to the body cap; nothing is ever read on the caller's behalf.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Callable, Optional

from ..bodies import BodyBuffer
from .event import OutgoingCall
from .recorder import OutgoingRecorder

__all__ = ["StreamWatch"]

# (response, body consumed, finished_at, error) -> the call to record
MakeCall = Callable[[Any, Optional[BodyBuffer], float, Optional[BaseException]], OutgoingCall]


class StreamWatch:
    """Watches one response; holds it only weakly, so that letting it go still works.

    `make_call` and `stand_in` must not hold the response either: `stand_in()`
    builds what the callbacks receive when the response was collected unread.
    """

    __slots__ = ("_recorder", "_response", "_make_call", "_stand_in", "_finalizer", "body", "last", "done")

    def __init__(self, recorder: OutgoingRecorder, response: Any, make_call: MakeCall, stand_in: Callable[[], Any]) -> None:
        self._recorder = recorder
        self._response = weakref.ref(response)
        self._make_call = make_call
        self._stand_in = stand_in
        self.body: Optional[BodyBuffer] = BodyBuffer(recorder.body_limit) if recorder.log_body else None
        self.last = time.time()
        self.done = False
        self._finalizer = weakref.finalize(response, self._abandoned)
        # At interpreter exit the queue writers are closing: nothing to record into.
        self._finalizer.atexit = False

    def chunk(self, data: bytes) -> None:
        self.last = time.time()
        if self.body is not None and data:
            self.body.append(data)

    def finish(self, error: Optional[BaseException] = None) -> None:
        """The caller is done: record now, from sync code (or a generator being closed)."""
        call = self._take(error, abandoned=False)
        if call is not None:
            self._recorder.record(call)

    async def afinish(self, error: Optional[BaseException] = None) -> None:
        call = self._take(error, abandoned=False)
        if call is not None:
            await self._recorder.arecord(call)

    def _abandoned(self) -> None:
        call = self._take(None, abandoned=True)
        if call is not None:
            self._recorder.record(call)

    def _take(self, error: Optional[BaseException], abandoned: bool) -> Optional[OutgoingCall]:
        if self.done:
            return None
        self.done = True
        try:
            self._finalizer.detach()
            response = self._response()
            if response is None:
                response = self._stand_in()
            # Let go without a read: the last thing that happened is the last chunk.
            finished = self.last if abandoned else time.time()
            return self._make_call(response, self.body, finished, error)
        except Exception:
            self._recorder.internal_error()
            return None
