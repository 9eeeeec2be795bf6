"""A bare ASGI app that, like Django's, does not speak the lifespan protocol."""
from __future__ import annotations

import asyncio

from moesifasgi import MoesifMiddleware
from tests.server_apps.common import SETTINGS, SLOW_SECONDS, slow_call_started


async def plain(scope, receive, send) -> None:
    if scope["type"] != "http":
        raise RuntimeError(f"{scope['type']} is not supported")
    body = b"fast"
    if scope["path"] == "/slow":
        slow_call_started()
        await asyncio.sleep(SLOW_SECONDS)
        body = b"slow"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


app = MoesifMiddleware(plain, settings=SETTINGS)
