from __future__ import annotations

from a2wsgi import WSGIMiddleware

from moesifasgi import MoesifMiddleware
from tests.server_apps.common import SETTINGS
from tests.server_apps.flask_views import flask_app

app = MoesifMiddleware(WSGIMiddleware(flask_app), settings=SETTINGS)
