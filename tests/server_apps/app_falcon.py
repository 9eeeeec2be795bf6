from __future__ import annotations

import asyncio

import falcon.asgi

from moesifasgi import MoesifMiddleware
from tests.server_apps.common import SETTINGS, SLOW_SECONDS, slow_call_started


class Fast:
    async def on_get(self, req, resp) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "fast"


class Slow:
    async def on_get(self, req, resp) -> None:
        slow_call_started()
        await asyncio.sleep(SLOW_SECONDS)
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "slow"


falcon_app = falcon.asgi.App()
falcon_app.add_route("/fast", Fast())
falcon_app.add_route("/slow", Slow())

app = MoesifMiddleware(falcon_app, settings=SETTINGS)
