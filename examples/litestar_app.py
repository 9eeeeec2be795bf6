"""A Litestar app with moesifasgi around the whole app.

Not `Litestar(middleware=[DefineMiddleware(MoesifMiddleware, ...)])`: Litestar
runs that middleware only for calls that matched a route, so 404s and 405s
would not be recorded.

    pip install litestar
    MOESIF_APPLICATION_ID=... uvicorn examples.litestar_app:app --workers 2
"""
from __future__ import annotations

import os
from typing import Any, Dict

from litestar import Litestar, Request, get, post

from moesifasgi import MoesifMiddleware


@get("/items/{item_id:int}", sync_to_thread=False)
def read_item(request: Request) -> Dict[str, Any]:
    # Parameters read from the request: how to declare them differs across
    # Litestar 2.x releases (the latest deprecate the inferred style).
    return {"id": request.path_params["item_id"], "q": request.query_params.get("q")}


@post("/orders")
async def create_order(request: Request) -> Dict[str, Any]:
    data = await request.json()
    return {"order_id": 1001, "items": data.get("items", [])}


def identify_user(request, response):
    return request.headers.get("x-user-id")


# `litestar_app` stays the Litestar app (for its CLI, tests, OpenAPI...); serve `app`.
litestar_app = Litestar(route_handlers=[read_item, create_order])
app = MoesifMiddleware(litestar_app, settings={
    "APPLICATION_ID": os.environ.get("MOESIF_APPLICATION_ID", "demo-application-id"),
    "IDENTIFY_USER": identify_user,
    "REQUEST_BODY_MASKS": ["password", "card_number"],
})
