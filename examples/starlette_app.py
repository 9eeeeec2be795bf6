"""A plain Starlette app with moesifasgi.

    MOESIF_APPLICATION_ID=... uvicorn examples.starlette_app:app
"""
from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from moesifasgi import MoesifMiddleware


async def homepage(request):
    return JSONResponse({"hello": "world"})


async def echo(request):
    return JSONResponse(await request.json())


app = Starlette(
    routes=[Route("/", homepage), Route("/echo", echo, methods=["POST"])],
    middleware=[
        Middleware(
            MoesifMiddleware,
            settings={
                "APPLICATION_ID": os.environ.get("MOESIF_APPLICATION_ID", "demo-application-id"),
                "BASE_URI": os.environ.get("MOESIF_BASE_URI", "https://api.moesif.net"),
                "IDENTIFY_USER": lambda request, response: request.headers.get("x-user-id"),
            },
        )
    ],
)
