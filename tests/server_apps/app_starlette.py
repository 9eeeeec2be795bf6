from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from moesifasgi import MoesifMiddleware
from tests.server_apps.common import SETTINGS, SLOW_SECONDS, slow_call_started


async def fast(request):
    return PlainTextResponse("fast")


async def slow(request):
    slow_call_started()
    await asyncio.sleep(SLOW_SECONDS)
    return PlainTextResponse("slow")


app = Starlette(
    routes=[Route("/fast", fast), Route("/slow", slow)],
    middleware=[Middleware(MoesifMiddleware, settings=SETTINGS)],
)
