"""Capture of the HTTP calls an app makes (with `requests` or `httpx`) into the same queue.

In an ASGI app, ``CAPTURE_OUTGOING_REQUESTS: True`` in the middleware's settings
turns it on. Anywhere else (a script, a worker, a cron job)::

    from moesifasgi.outgoing import capture_outgoing

    capture_outgoing({"APPLICATION_ID": "..."}, queue_path="/var/lib/myjob/moesif.sqlite")
    requests.get("https://api.example.com/v1/things")   # recorded

and let ``moesif-flush`` (or any app with the embedded flusher on the same
queue file) send the events to Moesif.

What is recorded: every call made through ``requests`` (any Session and the
module-level helpers) or ``httpx`` (Client, AsyncClient, and the module-level
helpers), from any thread or task, one event per HTTP exchange (each redirect
hop is one), with ``direction: "Outgoing"``, the full URL, both bodies (cap and
encoding as for incoming calls; LOG_BODY_OUTGOING turns them off), and the
request and response times. A streamed response is recorded once the caller is
done with it, with the part of the body the caller read. The *_OUTGOING
callbacks receive the library's own request and response objects (the response
is None for a failed call), plain or ``async def``; MASK_EVENT_MODEL and the
server-side sampling apply.

A call that gets no response (connection refused, timeout, reset) is recorded
with status 0, no response headers, and the error as a JSON response body:
``{"error": {"type": "httpx.ConnectError", "message": "..."}}``. The exception
still reaches the caller, the very same object.

Never recorded: calls to BASE_URI or to ``*.moesif.net``, calls carrying an
``X-Moesif-Application-Id`` (as the flusher's do) or ``X-Moesif-SDK`` header,
calls made from inside the callbacks, and httpx calls that never leave the
process (ASGITransport, WSGITransport, Starlette's TestClient).

Limits: a request body that is a file or generator (a streamed upload) is not
read, so the event has none; for a streamed `requests` response, bytes read
straight from ``response.raw`` are not seen; a streamed response the caller
never reads nor closes is recorded when it is garbage-collected, and its
callbacks then get a stand-in response object with the same status and headers.
Outgoing events are always queued as DURABILITY="batched".
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Mapping, Optional

from ..settings import Settings, parse_settings
from . import httpx_patch, requests_patch
from .recorder import OutgoingRecorder

__all__ = ["capture_outgoing", "install", "installed", "uninstall"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_recorder: Optional[OutgoingRecorder] = None


def install(settings: Settings) -> None:
    """Capture outgoing calls into `settings.queue_path` from now on, in this process.

    Idempotent: each library is patched once per process, and installing again
    (a second middleware, a rebuilt app) only replaces the settings in use, so a
    call is never recorded twice. A library that is not installed is skipped.
    """
    global _recorder
    recorder = OutgoingRecorder(settings)
    with _lock:
        slots = requests_patch.patch() + httpx_patch.patch()
        previous = _recorder
        for slot in slots:
            slot.recorder = recorder
        _recorder = recorder
    if previous is not None and previous.settings.queue_path != settings.queue_path:
        logger.info("moesifasgi: outgoing calls now go to %s (was %s)", settings.queue_path,
                    previous.settings.queue_path)


def capture_outgoing(settings: Mapping[str, Any], queue_path: Optional[str] = None) -> Settings:
    """Turn on outgoing capture outside an ASGI app; returns the settings in use.

    `settings` takes the middleware's keys (APPLICATION_ID is required; the
    *_OUTGOING callbacks, LOG_BODY_OUTGOING, MASK_EVENT_MODEL, MAX_BODY_BYTES,
    API_VERSION and BASE_URI apply). `queue_path` overrides QUEUE_PATH; without
    either, the default queue file of the middleware is used. Calling this means
    "capture": CAPTURE_OUTGOING_REQUESTS is not consulted.

        capture_outgoing({"APPLICATION_ID": "..."}, queue_path="/var/lib/myjob/moesif.sqlite")
    """
    options = dict(settings)
    if queue_path is not None:
        options["QUEUE_PATH"] = queue_path
    parsed = parse_settings(options)
    install(parsed)
    return parsed


def installed() -> bool:
    return _recorder is not None


def uninstall() -> None:
    """Stop capturing and put the libraries' methods back (for tests)."""
    global _recorder
    with _lock:
        requests_patch.unpatch()
        httpx_patch.unpatch()
        _recorder = None
