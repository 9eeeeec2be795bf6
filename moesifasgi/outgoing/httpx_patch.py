"""Capture for `httpx`: Client.send and AsyncClient.send (httpx.get and friends use a Client).

One event per HTTP exchange: httpx follows redirects and auth retries inside
send, and keeps the earlier exchanges, already read, in `response.history`.

Calls that never leave the process are not captured: those served by an app
through httpx.ASGITransport or WSGITransport, or by Starlette's TestClient.

Without stream=True, send has read the body before returning, and the event is
recorded then. A streamed response is recorded when the caller is done with it;
its stream is wrapped so that the raw bytes the caller pulls are copied on the
way (still Content-Encoded: the event builder decompresses gzip itself).
"""
from __future__ import annotations

import time
from typing import Any, AsyncIterator, Callable, Iterator, List, Optional

from ..bodies import BodyBuffer
from .event import FAILED_STATUS, OutgoingCall, plain_headers
from .patching import Slot, unwrap_method, wrap_method
from .recorder import OutgoingRecorder
from .streams import StreamWatch

__all__ = ["patch", "unpatch"]


def _library() -> Any:
    try:
        import httpx
    except ImportError:  # not installed: nothing to capture
        return None
    return httpx


# Looked up once, when patching: httpx may be missing, and the hot path should not import.
_request_class: Any = None
_in_process_transports: tuple = ()


def patch() -> List[Slot]:
    global _request_class, _in_process_transports
    httpx = _library()
    if httpx is None:
        return []
    _request_class = httpx.Request
    _in_process_transports = (httpx.ASGITransport, httpx.WSGITransport)
    return [wrap_method(httpx.Client, "send", _wrap_send), wrap_method(httpx.AsyncClient, "send", _wrap_async_send)]


def unpatch() -> None:
    httpx = _library()
    if httpx is not None:
        unwrap_method(httpx.Client, "send")
        unwrap_method(httpx.AsyncClient, "send")


def _capturing(recorder: OutgoingRecorder, client: Any, request: Any) -> bool:
    """Whether to capture this call; False, never an exception, for a request we cannot read."""
    try:
        return (
            isinstance(request, _request_class)
            and recorder.wants(str(request.url), request.headers)
            and not _in_process(client, request)
        )
    except Exception:
        return False  # a request httpx cannot send either: it will tell the caller


def _in_process(client: Any, request: Any) -> bool:
    """True when the client hands this request to an app in this process, not to the network."""
    try:
        transport = client._transport_for_url(request.url)  # honours mounts
    except Exception:
        transport = getattr(client, "_transport", None)
    kind = type(transport)
    if kind.__module__.startswith("starlette.testclient"):
        return True
    return issubclass(kind, _in_process_transports)


def _wrap_send(original: Callable[..., Any], slot: Slot) -> Callable[..., Any]:
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        recorder: Optional[OutgoingRecorder] = slot.recorder
        if recorder is None or not _capturing(recorder, self, request):
            return original(self, request, *args, **kwargs)
        started = time.time()
        try:
            response = original(self, request, *args, **kwargs)
        except BaseException as exc:
            call = _failure(recorder, request, exc, started)
            if call is not None:
                recorder.record(call)
            raise
        for call in _finished_hops(recorder, response, started, bool(kwargs.get("stream"))):
            recorder.record(call)
        return response

    return send


def _wrap_async_send(original: Callable[..., Any], slot: Slot) -> Callable[..., Any]:
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        recorder: Optional[OutgoingRecorder] = slot.recorder
        if recorder is None or not _capturing(recorder, self, request):
            return await original(self, request, *args, **kwargs)
        started = time.time()
        try:
            response = await original(self, request, *args, **kwargs)
        except BaseException as exc:
            call = _failure(recorder, request, exc, started)
            if call is not None:
                if isinstance(exc, Exception):
                    await recorder.arecord(call)
                else:
                    # Cancelled (or interrupted): awaiting now could be cut short
                    # again; record() hands async callbacks to the loop instead.
                    recorder.record(call)
            raise
        for call in _finished_hops(recorder, response, started, bool(kwargs.get("stream"))):
            await recorder.arecord(call)
        return response

    return send


def _request_body(request: Any) -> Optional[bytes]:
    # httpx reads a body given as bytes, text, JSON or form when building the
    # request; multipart uploads and generators stay streams, never read here.
    content = getattr(request, "_content", None)
    return content if isinstance(content, bytes) else None


def _call(
    recorder: OutgoingRecorder, request: Any, response: Any, started: float, finished: float,
    body: Optional[BodyBuffer], encoded: bool, error: Optional[BaseException] = None,
) -> OutgoingCall:
    response_headers = {} if response is None else plain_headers(response.headers.multi_items())
    return OutgoingCall(
        request=request,
        response=response,
        method=request.method,
        url=str(request.url),
        request_headers=plain_headers(request.headers.multi_items()),
        request_body=_request_body(request) if recorder.log_body else None,
        status=FAILED_STATUS if response is None else response.status_code,
        response_headers=response_headers,
        response_body=body,
        response_encoding=response_headers.get("content-encoding") if encoded else None,
        started_at=started,
        finished_at=finished,
        error=error,
    )


def _failure(recorder: OutgoingRecorder, request: Any, exc: BaseException, started: float) -> Optional[OutgoingCall]:
    try:
        return _call(recorder, request, None, started, time.time(), None, False, exc)
    except Exception:
        recorder.internal_error()
        return None


def _read_body(recorder: OutgoingRecorder, response: Any) -> Optional[BodyBuffer]:
    if not recorder.log_body:
        return None
    body = BodyBuffer(recorder.body_limit)
    body.append(response.content)  # already read by httpx: decoded bytes
    return body


def _finished_hops(recorder: OutgoingRecorder, response: Any, started: float, stream: bool) -> List[OutgoingCall]:
    """The calls ready to record now; a streamed last response is watched instead."""
    try:
        calls = []
        begin = started
        for hop in response.history:
            # httpx times each exchange from send to close; they ran one after another.
            end = begin + _elapsed(hop)
            calls.append(_call(recorder, hop.request, hop, begin, end, _read_body(recorder, hop), False))
            begin = end
        if stream:
            _watch(recorder, response, begin)
        else:
            calls.append(_call(recorder, response.request, response, begin, time.time(), _read_body(recorder, response), False))
        return calls
    except Exception:
        recorder.internal_error()
        return []


def _elapsed(response: Any) -> float:
    try:
        return max(0.0, response.elapsed.total_seconds())
    except Exception:  # not closed yet: no elapsed
        return 0.0


def _watch(recorder: OutgoingRecorder, response: Any, started: float) -> None:
    httpx = _library()
    request = response.request
    status, headers = response.status_code, response.headers

    def make_call(resp: Any, body: Optional[BodyBuffer], finished: float, error: Optional[BaseException]) -> OutgoingCall:
        return _call(recorder, request, resp, started, finished, body, True, error)

    def stand_in() -> Any:
        return httpx.Response(status, headers=headers, request=request)

    watch = StreamWatch(recorder, response, make_call, stand_in)
    if isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = _async_stream_class()(response.stream, watch)
    else:
        response.stream = _sync_stream_class()(response.stream, watch)


_classes: dict = {}


def _sync_stream_class() -> type:
    """A SyncByteStream (so httpx accepts it) that copies what passes through."""
    cls = _classes.get("sync")
    if cls is None:
        httpx = _library()

        class WatchedStream(httpx.SyncByteStream):
            def __init__(self, inner: Any, watch: StreamWatch) -> None:
                self._inner = inner
                self._watch = watch

            def __iter__(self) -> Iterator[bytes]:
                watch = self._watch
                try:
                    for chunk in self._inner:
                        if not watch.done:
                            watch.chunk(chunk)
                        yield chunk
                except GeneratorExit:  # the caller stopped iterating
                    watch.finish()
                    raise
                except BaseException as exc:  # a read failed midway; it reaches the caller as it was
                    watch.finish(exc)
                    raise
                watch.finish()

            def close(self) -> None:
                try:
                    self._inner.close()
                finally:
                    self._watch.finish()

        cls = _classes["sync"] = WatchedStream
    return cls


def _async_stream_class() -> type:
    cls = _classes.get("async")
    if cls is None:
        httpx = _library()

        class WatchedAsyncStream(httpx.AsyncByteStream):
            def __init__(self, inner: Any, watch: StreamWatch) -> None:
                self._inner = inner
                self._watch = watch

            async def __aiter__(self) -> AsyncIterator[bytes]:
                watch = self._watch
                try:
                    async for chunk in self._inner:
                        if not watch.done:
                            watch.chunk(chunk)
                        yield chunk
                except GeneratorExit:
                    watch.finish()
                    raise
                except BaseException as exc:
                    watch.finish(exc)
                    raise
                await watch.afinish()

            async def aclose(self) -> None:
                try:
                    await self._inner.aclose()
                finally:
                    await self._watch.afinish()

        cls = _classes["async"] = WatchedAsyncStream
    return cls
