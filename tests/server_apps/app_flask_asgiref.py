from __future__ import annotations

from asgiref.wsgi import WsgiToAsgi

from moesifasgi import MoesifMiddleware
from tests.server_apps.common import SETTINGS
from tests.server_apps.flask_views import flask_app

app = MoesifMiddleware(WsgiToAsgi(flask_app), settings=SETTINGS)
