"""Capture of the HTTP calls an app makes (with `requests` or `httpx`) into the same queue.

What is recorded, what never is, and the options are in the README ("Outgoing API
calls"). Inside an ASGI app the middleware's ``CAPTURE_OUTGOING_REQUESTS`` turns it
on; anywhere else, :func:`capture_outgoing`. The pieces: :mod:`.patching` patches
each library once per process, :mod:`.requests_patch` and :mod:`.httpx_patch` wrap
their calls, :mod:`.streams` follows a streamed response until the caller is done,
:mod:`.event` builds the event and :mod:`.recorder` queues it.

Details the README leaves out: a streamed response the caller never reads nor
closes is recorded when it is garbage-collected, its callbacks then getting a
stand-in response object with the same status and headers; calls carrying an
``X-Moesif-SDK`` header are not recorded either; outgoing events are always
queued as DURABILITY="batched".
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
