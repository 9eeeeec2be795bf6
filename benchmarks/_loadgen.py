"""A Python load generator that remembers every call whose response came back.

wrk cannot tell which calls succeeded; the fault-injection scenarios need exactly
that. Each call sends a fresh `X-Moesif-Transaction-Id` (both packages keep an
incoming one), and the id of every 2xx response is recorded, so the ids the client
received can be compared one for one with the events Moesif received.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import List, Optional

import httpx

ECHO_BODY = {"user": "ann", "items": [{"sku": f"SKU-{i}", "qty": i, "note": "x" * 40} for i in range(12)]}


class LoadGenerator:
    """`concurrency` keep-alive clients in a background thread, cycling over
    /json, /echo and /stream, until `stop()`."""

    def __init__(self, base_url: str, concurrency: int = 8, paths: tuple = ("/json", "/echo", "/stream"),
                 timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.concurrency = concurrency
        self.paths = paths
        self.timeout = timeout
        self.ok_ids: List[str] = []
        self.latencies_ms: List[float] = []  # of 2xx calls, with their end time in `ended`
        self.ended: List[float] = []
        self.started: List[float] = []  # perf_counter() when each 2xx call (in `ok_ids` order) was sent
        self.non_2xx = 0
        self.failures = 0  # connection refused/reset, timeouts: the client got no response
        self.mismatched = 0  # 2xx whose response header does not carry the id sent
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "LoadGenerator":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "LoadGenerator":
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self

    def run_for(self, seconds: float) -> "LoadGenerator":
        self.start()
        time.sleep(seconds)
        return self.stop()

    @property
    def ok(self) -> int:
        return len(self.ok_ids)

    def ids_sent_after(self, moment: float) -> List[str]:
        """Ids of the 2xx calls sent after `moment` (a perf_counter() reading)."""
        return [tid for tid, at in zip(list(self.ok_ids), list(self.started)) if at > moment]

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=self.timeout) as client:
            await asyncio.gather(*(self._client(client, n) for n in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient, n: int) -> None:
        i = n
        while not self._stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            tid = str(uuid.uuid4())
            headers = {"X-Moesif-Transaction-Id": tid}
            started = time.perf_counter()
            try:
                if path == "/echo":
                    response = await client.post(path, json=ECHO_BODY, headers=headers)
                else:
                    response = await client.get(path, headers=headers)
            except httpx.HTTPError:
                self.failures += 1
                await asyncio.sleep(0.05)  # a server that is restarting: do not spin
                continue
            if 200 <= response.status_code < 300:
                if response.headers.get("x-moesif-transaction-id") != tid:  # the original never returns it
                    self.mismatched += 1
                self.ok_ids.append(tid)
                self.started.append(started)
                now = time.perf_counter()
                self.latencies_ms.append((now - started) * 1000)
                self.ended.append(now)
            else:
                self.non_2xx += 1
