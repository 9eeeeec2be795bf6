"""Capture for `requests`: Session.send, which the module-level helpers use too.

One event per HTTP exchange. requests follows a redirect by calling
Session.send again for each hop, and those nested sends record their own hops;
hops that never pass through send (an auth handler's retry, made on the
adapter) are recorded by the outer send from `response.history`.

A response read by requests before send returns (the default, stream=False) is
recorded at once. A streamed one is recorded when the caller is done with it,
with the bytes it consumed through requests (iter_content, iter_lines, content,
text, json); bytes read straight from `response.raw` are not seen.
"""
from __future__ import annotations

import contextvars
import time
import weakref
from typing import Any, Callable, Iterator, List, Optional

from .._compat import is_starlette_testclient_session
from ..bodies import BodyBuffer
from .event import FAILED_STATUS, OutgoingCall, plain_headers
from .patching import Slot, unwrap_method, wrap_method
from .recorder import OutgoingRecorder
from .streams import StreamWatch

__all__ = ["patch", "unpatch"]

# What the sends nested in the current one handled (their responses, and the
# exception of one that failed), so that the outer send records neither again.
_handled: contextvars.ContextVar[Optional[List[Any]]] = contextvars.ContextVar(
    "moesifasgi_requests_handled", default=None
)


def _library() -> Any:
    try:
        import requests
    except ImportError:  # not installed: nothing to capture
        return None
    return requests


def patch() -> List[Slot]:
    requests = _library()
    if requests is None:
        return []
    return [wrap_method(requests.Session, "send", _wrap_send)]


def unpatch() -> None:
    requests = _library()
    if requests is not None:
        unwrap_method(requests.Session, "send")


def _wrap_send(original: Callable[..., Any], slot: Slot) -> Callable[..., Any]:
    prepared = _library().PreparedRequest

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        recorder: Optional[OutgoingRecorder] = slot.recorder
        if recorder is None or not isinstance(request, prepared) or not _capturing(recorder, self, request):
            return original(self, request, **kwargs)
        started = time.time()
        parent = _handled.get()
        mine: List[Any] = []
        token = _handled.set(mine)
        try:
            try:
                response = original(self, request, **kwargs)
            finally:
                _handled.reset(token)
        except BaseException as exc:
            if not any(item is exc for item in mine):  # else a nested hop recorded it
                _record_failure(recorder, request, exc, started)
            if parent is not None:
                parent.append(exc)
            raise
        hops = _record_hops(recorder, request, response, started, mine)
        if parent is not None:
            parent.extend(hops)
        return response

    return send


def _capturing(recorder: OutgoingRecorder, session: Any, request: Any) -> bool:
    """Whether to capture this call; False, never an exception, for a request we cannot read."""
    try:
        url = request.url or ""
        return recorder.wants(url, request.headers) and not is_starlette_testclient_session(session, url)
    except Exception:
        return False  # a request requests cannot send either: it will tell the caller


def _request_body(request: Any) -> Optional[bytes]:
    body = request.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return None  # a file or generator being streamed up: not ours to read


def _call(
    recorder: OutgoingRecorder, request: Any, response: Any, started: float, finished: float,
    body: Optional[BodyBuffer], error: Optional[BaseException] = None,
) -> OutgoingCall:
    return OutgoingCall(
        request=request,
        response=response,
        method=request.method or "GET",
        url=request.url or "",
        request_headers=plain_headers(request.headers.items()),
        request_body=_request_body(request) if recorder.log_body else None,
        status=FAILED_STATUS if response is None else int(response.status_code or 0),
        response_headers={} if response is None else plain_headers(response.headers.items()),
        response_body=body,
        response_encoding=None,  # requests hands out decoded bytes only
        started_at=started,
        finished_at=finished,
        error=error,
    )


def _record_failure(recorder: OutgoingRecorder, request: Any, exc: BaseException, started: float) -> None:
    try:
        call = _call(recorder, request, None, started, time.time(), None, exc)
    except Exception:
        recorder.internal_error()
        return
    recorder.record(call)


def _record_hops(recorder: OutgoingRecorder, request: Any, response: Any, started: float, handled: List[Any]) -> List[Any]:
    """Record each exchange behind `response` not recorded by a nested send; return them all."""
    try:
        hops = list(getattr(response, "history", None) or ()) + [response]
        begin = started
        for index, hop in enumerate(hops):
            last = index == len(hops) - 1
            # requests times each hop up to its headers; the hops ran one after another.
            end = time.time() if last else begin + _elapsed(hop)
            if not any(item is hop for item in handled):
                if _was_read(hop):
                    body = None
                    if recorder.log_body:
                        body = BodyBuffer(recorder.body_limit)
                        body.append(hop._content)
                    recorder.record(_call(recorder, hop.request or request, hop, begin, end, body))
                else:
                    _watch(recorder, hop.request or request, hop, begin)
            begin = end
        return hops
    except Exception:
        recorder.internal_error()
        return [response]


def _elapsed(response: Any) -> float:
    try:
        return max(0.0, response.elapsed.total_seconds())
    except Exception:
        return 0.0


def _was_read(response: Any) -> bool:
    return bool(getattr(response, "_content_consumed", False)) and isinstance(getattr(response, "_content", None), bytes)


def _watch(recorder: OutgoingRecorder, request: Any, response: Any, started: float) -> None:
    """Follow a streamed response through its own iter_content and close.

    Both are set on the instance, so that every path requests offers (content,
    text, json, iter_lines, the with-statement) goes through them; they hold the
    response weakly, so that a response the caller lets go is still freed at once.
    """
    cls = type(response)
    status, headers, url, reason = response.status_code, response.headers, response.url, response.reason
    encoding = response.encoding

    def make_call(resp: Any, body: Optional[BodyBuffer], finished: float, error: Optional[BaseException]) -> OutgoingCall:
        return _call(recorder, request, resp, started, finished, body, error)

    def stand_in() -> Any:
        lost = _library().Response()
        lost.status_code, lost.headers, lost.url, lost.reason = status, headers, url, reason
        lost.encoding, lost.request = encoding, request
        lost._content, lost._content_consumed = False, True  # its body went with the original
        return lost

    watch = StreamWatch(recorder, response, make_call, stand_in)
    ref = weakref.ref(response)

    def iter_content(*args: Any, **kwargs: Any) -> Iterator[Any]:
        owner = ref()
        return _watched(cls.iter_content(owner, *args, **kwargs), watch, owner.encoding)

    def close() -> None:
        try:
            cls.close(ref())
        finally:
            watch.finish()

    response.iter_content = iter_content
    response.close = close


def _watched(chunks: Iterator[Any], watch: StreamWatch, encoding: Optional[str]) -> Iterator[Any]:
    try:
        for chunk in chunks:
            if watch.body is not None and not watch.done:
                _keep(watch, chunk, encoding)
            yield chunk
    except GeneratorExit:  # the caller stopped iterating
        watch.finish()
        raise
    except BaseException as exc:  # a read failed midway; it goes on to the caller as it was
        watch.finish(exc)
        raise
    watch.finish()


def _keep(watch: StreamWatch, chunk: Any, encoding: Optional[str]) -> None:
    try:
        if isinstance(chunk, str):  # iter_content(decode_unicode=True)
            chunk = chunk.encode(encoding or "utf-8", "replace")
        watch.chunk(chunk)
    except Exception:
        watch.chunk(str(chunk).encode("utf-8", "replace"))
