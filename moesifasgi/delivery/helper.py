"""The embedded flusher's helper process: drains the queue on behalf of the web workers.

One web worker starts it (see `helper_supervisor.py`) as

    python -m moesifasgi.delivery.helper

configured through its environment, so that the application id never shows in
`ps`. It is `moesif-flush run` with three differences: it gives up instead of
standing by when another process holds the lease, it exits when the worker that
started it dies (even by kill -9), and it logs only warnings unless asked.

Why a process: a flusher inside a worker shares that worker's GIL, and posting
and bookkeeping take a visible share of a busy worker's requests per second
(``benchmarks/http_overhead.py --flusher`` compares the modes); here they run on
another core.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from typing import Optional

from .flusher import Flusher, FlusherOptions
from .lease import LEASE_SECONDS, RENEW_INTERVAL
from .pump import BATCH_WAIT

logger = logging.getLogger(__name__)

PARENT_CHECK_INTERVAL = 1.0
_PR_SET_PDEATHSIG = 1


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if not value else float(value)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if not value else int(value)


def options_from_env() -> FlusherOptions:
    lease = _env_float("MOESIF_HELPER_LEASE_SECONDS", LEASE_SECONDS)
    return FlusherOptions(
        batch_size=_env_int("MOESIF_BATCH_SIZE", 100),
        concurrency=_env_int("MOESIF_FLUSH_CONCURRENCY", 4),
        batch_wait=_env_float("MOESIF_BATCH_WAIT", BATCH_WAIT),
        lease_seconds=lease,
        renew_interval=min(RENEW_INTERVAL, lease / 3),
    )


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM us when the parent dies; the periodic getppid() check
    in `_serve` covers other systems and a parent that died before this call."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)


async def _serve(flusher: Flusher, parent_pid: Optional[int], stop_timeout: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    task = asyncio.ensure_future(flusher.run(standby=False))
    while not stop.is_set() and not task.done():
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiter, task], timeout=PARENT_CHECK_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if parent_pid is not None and os.getppid() != parent_pid:
            logger.warning("the worker that started this helper (pid %d) is gone; stopping", parent_pid)
            break
    await flusher.stop(timeout=stop_timeout)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def main() -> int:
    parent_pid = _env_int("MOESIF_HELPER_PARENT_PID", 0) or None
    if parent_pid is not None:
        _die_with_parent(parent_pid)
        if os.getppid() != parent_pid:
            return 0  # the parent died while we were starting
    logging.basicConfig(
        level=os.environ.get("MOESIF_HELPER_LOG_LEVEL", "WARNING").upper(),
        format="moesif-flush helper[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        queue_path = os.environ["MOESIF_QUEUE_PATH"]
        application_id = os.environ["MOESIF_APPLICATION_ID"]
        base_uri = os.environ["MOESIF_BASE_URI"]
        options = options_from_env()
    except (KeyError, ValueError) as exc:
        logger.error("the helper was started without its configuration (%s); exiting", exc)
        return 2
    flusher = Flusher(queue_path, application_id, base_uri, options)
    try:
        asyncio.run(_serve(flusher, parent_pid, _env_float("MOESIF_HELPER_STOP_TIMEOUT", 4.0)))
    except Exception:
        logger.exception("the flusher helper stopped on an error; events stay queued")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
