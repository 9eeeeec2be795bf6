"""Litestar with the middleware around the whole app (what the README advises):
it sees every call, 404s included, and the lifespan."""
from __future__ import annotations

import asyncio

from litestar import Litestar, get

from moesifasgi import MoesifMiddleware
from tests.server_apps.common import SETTINGS, SLOW_SECONDS, slow_call_started


@get("/fast", sync_to_thread=False)
def fast() -> str:
    return "fast"


@get("/slow")
async def slow() -> str:
    slow_call_started()
    await asyncio.sleep(SLOW_SECONDS)
    return "slow"


app = MoesifMiddleware(Litestar(route_handlers=[fast, slow]), settings=SETTINGS)
