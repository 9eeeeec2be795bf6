"""The web workers' side of the embedded flusher: keep one helper process draining.

Every worker runs one `HelperSupervisor` task on its event loop. Every few
seconds it looks at the lease (a read, no lock): while some live process holds
it, there is nothing to do. When the lease is free or expired, the worker that
gets the spawn lock (an flock next to the queue file) starts
`python -m moesifasgi.delivery.helper` and holds the lock until the helper leads,
so that workers noticing at the same moment do not start one helper each.

The helper is the worker's child: it dies with the worker (PR_SET_PDEATHSIG, and a
getppid() check), the worker stops it on lifespan shutdown or at exit, and a
helper that crashed is replaced once its lease has expired.

If the helper cannot be started at all (no usable Python executable, a sandbox
that forbids processes), the worker falls back to draining on its own loop.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Callable, Dict, Optional


try:
    import fcntl
except ImportError:  # Windows: no flock to elect the worker that starts the helper
    fcntl = None  # type: ignore[assignment]

from moesifasgi.diagnostics import ProblemLog
from moesifasgi.per_process import PerProcess
from moesifasgi.queue_location import open_private_file

from .async_db import AsyncDB
from .lease import LEASE_SECONDS, current_leader

if TYPE_CHECKING:
    from moesifasgi.settings import Settings

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 3.0
# A helper that has not taken the lease by then is presumed stuck; the lock is let
# go so that another check (ours or another worker's) can try again.
SPAWN_TIMEOUT = 15.0
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _internal_seconds(name: str, default: float) -> float:
    """A timing that the fault-injection tests shorten through an internal
    environment variable (benchmarks/faults.py: a killed helper is replaced in
    seconds, not after the 10 s lease). Not a setting: unset, the default holds."""
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if value > 0 else default


@dataclass(frozen=True)
class HelperOptions:
    check_interval: float = field(
        default_factory=lambda: _internal_seconds("_MOESIF_HELPER_CHECK_INTERVAL", CHECK_INTERVAL))
    lease_seconds: float = field(
        default_factory=lambda: _internal_seconds("_MOESIF_HELPER_LEASE_SECONDS", LEASE_SECONDS))
    stop_timeout: float = 4.0
    log_level: str = "WARNING"


class HelperSupervisor:
    def __init__(self, settings: Settings, options: Optional[HelperOptions] = None, *,
                 fallback: Optional[Callable[[], "asyncio.Future[None]"]] = None) -> None:
        self.settings = settings
        self.options = options or HelperOptions()
        self.child: Optional[subprocess.Popen] = None
        self.helpers_started = 0
        self._fallback = fallback  # starts the in-process flusher if no helper can run
        self._fallback_task: Optional["asyncio.Future[None]"] = None
        self._stopping = False
        self._problems = ProblemLog(logger, interval=None)
        # One connection on one thread, reopened if the file is replaced.
        self._db = AsyncDB(settings.queue_path)

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        if fcntl is None and self._fallback is not None:
            logger.info("moesifasgi: no flock on this system; the workers drain the queue in-process")
            self._fallback_task = self._fallback()
        while not self._stopping and self._fallback_task is None:
            try:
                await self.check()
                self._problems.clear("check")
            except Exception as exc:
                if self._stopping:
                    break  # stop() closed the database under this check
                # Once per episode: a broken queue path would otherwise log every few seconds.
                message = "moesifasgi: cannot check the flusher helper (%s); events stay queued, retrying"
                if not self._problems.report("check", message, exc):
                    logger.debug(message, exc)
            if self._fallback_task is not None:
                break
            # Jitter keeps the workers of one host from checking in lockstep.
            await asyncio.sleep(self.options.check_interval * random.uniform(0.8, 1.2))
        if self._fallback_task is not None:
            await self._fallback_task

    async def check(self) -> None:
        """One round: reap our helper if it exited, start one if nobody drains."""
        if self.child is not None:
            code = self.child.poll()
            if code is None:
                return
            log = logger.info if code == 0 else logger.warning
            log("moesifasgi: the flusher helper (pid %d) exited with code %s", self.child.pid, code)
            self.child = None
        if await self._lease_held():
            return
        lock = self._try_spawn_lock()
        if lock is None:
            return  # another worker is starting one right now
        try:
            if await self._lease_held():
                return  # started while we were taking the lock
            if not self._spawn():
                return
            deadline = time.monotonic() + SPAWN_TIMEOUT
            while time.monotonic() < deadline and self.child is not None and self.child.poll() is None:
                if await self._lease_held():
                    break
                await asyncio.sleep(0.1)
        finally:
            lock.close()  # closing the file releases the flock

    async def _lease_held(self) -> bool:
        return await self._db.run(_has_leader)

    def _try_spawn_lock(self) -> Optional[IO[bytes]]:
        fd = open_private_file(self.settings.queue_path + ".helper-lock")
        handle = os.fdopen(fd, "rb+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def _spawn(self) -> bool:
        if self._stopping:  # stop() ran while this check awaited the lease
            return False
        # Started from the event loop's thread on purpose: PR_SET_PDEATHSIG fires
        # when the *thread* that forked the child exits, and a pool thread may.
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "moesifasgi.delivery.helper"], env=self._child_env(),
                stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            logger.warning("moesifasgi: cannot start the flusher helper process (%s: %s); "
                           "this worker drains the queue itself instead", sys.executable, exc)
            if self._fallback is not None:
                self._fallback_task = self._fallback()
            return False
        self.helpers_started += 1
        _children.get()[self.child.pid] = self.child
        logger.info("moesifasgi: started the flusher helper (pid %d) for %s", self.child.pid,
                    self.settings.queue_path)
        return True

    def _child_env(self) -> Dict[str, str]:
        s, o = self.settings, self.options
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env.update({
            # The helper must import this very copy of the package.
            "PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else ""),
            "MOESIF_QUEUE_PATH": s.queue_path,
            "MOESIF_APPLICATION_ID": s.application_id,
            "MOESIF_BASE_URI": s.base_uri,
            "MOESIF_BATCH_SIZE": str(s.batch_size),
            "MOESIF_FLUSH_CONCURRENCY": str(s.flush_concurrency),
            "MOESIF_BATCH_WAIT": repr(s.event_batch_timeout),
            "MOESIF_HELPER_PARENT_PID": str(os.getpid()),
            "MOESIF_HELPER_LEASE_SECONDS": repr(o.lease_seconds),
            "MOESIF_HELPER_STOP_TIMEOUT": repr(o.stop_timeout),
            "MOESIF_HELPER_LOG_LEVEL": "DEBUG" if s.debug else o.log_level,
        })
        return env

    # -- stopping ------------------------------------------------------------------

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the helper we started (it finishes or releases its batches and the lease)."""
        self._stopping = True
        await self._db.close()
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()
        deadline = time.monotonic() + timeout
        while child.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if child.poll() is None:
            logger.warning("moesifasgi: the flusher helper (pid %d) did not stop in %.0f s; killing it "
                           "(its claims and lease expire on their own)", child.pid, timeout)
            child.kill()
            child.wait()
        _children.get().pop(child.pid, None)


def _has_leader(conn: sqlite3.Connection) -> bool:
    return current_leader(conn) is not None


# helper pid -> process, for the exit hook: this process's children only.
_children: PerProcess[Dict[int, subprocess.Popen]] = PerProcess(dict)


def _terminate_children() -> None:
    # A worker exiting without a lifespan shutdown: ask the helper to stop (it
    # would notice the orphaning within a second anyway). A forked copy of the
    # worker inherits the parent's map but must not touch its parent's helper.
    children = _children.peek()
    for child in list(children.values()) if children is not None else ():
        if child.poll() is None:
            try:
                child.terminate()
            except OSError:
                pass


atexit.register(_terminate_children)
