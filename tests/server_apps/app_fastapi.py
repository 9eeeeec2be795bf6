from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from moesifasgi import MoesifMiddleware
from tests.server_apps.common import SETTINGS, SLOW_SECONDS, slow_call_started

app = FastAPI()


@app.get("/fast", response_class=PlainTextResponse)
async def fast() -> str:
    return "fast"


@app.get("/slow", response_class=PlainTextResponse)
async def slow() -> str:
    slow_call_started()
    await asyncio.sleep(SLOW_SECONDS)
    return "slow"


app.add_middleware(MoesifMiddleware, settings=SETTINGS)
