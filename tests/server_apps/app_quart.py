from __future__ import annotations

import asyncio

from quart import Quart

from moesifasgi import MoesifMiddleware
from tests.server_apps.common import SETTINGS, SLOW_SECONDS, slow_call_started

app = Quart(__name__)


@app.get("/fast")
async def fast() -> str:
    return "fast"


@app.get("/slow")
async def slow() -> str:
    slow_call_started()
    await asyncio.sleep(SLOW_SECONDS)
    return "slow"


app.asgi_app = MoesifMiddleware(app.asgi_app, settings=SETTINGS)  # type: ignore[method-assign]
