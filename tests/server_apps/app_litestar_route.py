"""Litestar with the middleware in `middleware=[DefineMiddleware(...)]`: it runs
for matched routes only and never sees the lifespan, the hardest case for a
clean stop."""
from __future__ import annotations

import asyncio

from litestar import Litestar, get
from litestar.middleware import DefineMiddleware

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


app = Litestar(route_handlers=[fast, slow], middleware=[DefineMiddleware(MoesifMiddleware, settings=SETTINGS)])
