"""Running the synchronous queue operations off the event loop.

One thread per flusher owns one SQLite connection and runs whole transactions
(a `queue_store` function) per hop. We do not use aiosqlite here: it forwards
one statement per hop, so a claim would take four thread hops and an asyncio lock
to keep concurrent coroutines from interleaving their BEGIN/COMMIT; running the
same functions the CLI uses, one hop each, is both faster and simpler.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional, TypeVar

from moesifasgi.storage.queue_file import QueueFile

T = TypeVar("T")

logger = logging.getLogger(__name__)


class AsyncDB:
    """`await db.run(fn, *args)` calls `fn(conn, *args)` on the database thread.

    With `in_loop=True` the call runs right on the event loop instead. That is for
    a process whose loop does nothing but flush (`moesif-flush run`/`drain`): a
    queue operation is short, and skipping the thread hop and the GIL hand-offs
    it causes drains faster (``benchmarks/drain_benchmark.py``). Never in a web worker, where a
    locked file (busy timeout) would stall the app.
    """

    def __init__(self, path: str, *, in_loop: bool = False) -> None:
        self.path = path
        self.in_loop = in_loop
        # The flusher holds the disk reserve: on a full disk it is what lets
        # delivery, which frees space, carry on (see moesifasgi.storage.space).
        self.file = QueueFile(path, reserve=True)
        self._executor: Optional[ThreadPoolExecutor] = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="moesif-flush-db")

    def _call(self, fn: Callable[..., T], args: tuple, kwargs: Dict[str, Any]) -> T:
        # A replaced file is reopened by QueueFile (the workers write to the new
        # one: draining the old inode would strand them). A corrupt file is moved
        # aside and a full disk gets the reserve back: then one more try.
        try:
            return fn(self.file.connection(), *args, **kwargs)
        except Exception as exc:
            if not self.file.recover(exc):
                raise
        return fn(self.file.connection(), *args, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the queue database was closed")
        if self.in_loop:
            return self._call(fn, args, kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, args, kwargs)

    def _close_conn(self) -> None:
        self.file.close()

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            if self.in_loop:
                self._close_conn()
            else:
                await asyncio.get_running_loop().run_in_executor(executor, self._close_conn)
        finally:
            # The thread is idle now; do not block the loop waiting for it to exit.
            executor.shutdown(wait=False)
