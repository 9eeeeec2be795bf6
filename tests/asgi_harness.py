"""Drive an ASGI app directly with hand-made messages, recording what it sends."""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional


def http_scope(path: str = "/", method: str = "GET", headers: Optional[list] = None) -> Dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [(b"host", b"example.test")],
        "client": ("198.51.100.7", 5000),
        "server": ("example.test", 80),
    }


class Recorder:
    """An ASGI `send` that keeps every message and lets a test await a given count."""

    def __init__(self) -> None:
        self.messages: List[Dict[str, Any]] = []
        self._changed = asyncio.Event()

    async def __call__(self, message: Dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 2.0) -> None:
        async def _wait() -> None:
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)


def body_receiver(*chunks: bytes):
    pending = list(chunks) or [b""]

    async def receive() -> Dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return receive
