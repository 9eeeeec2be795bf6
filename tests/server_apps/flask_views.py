"""The Flask (WSGI) app that the a2wsgi and asgiref matrix entries serve."""
from __future__ import annotations

import time

from flask import Flask

from tests.server_apps.common import SLOW_SECONDS, slow_call_started

flask_app = Flask(__name__)


@flask_app.get("/fast")
def fast() -> str:
    return "fast"


@flask_app.get("/slow")
def slow() -> str:
    slow_call_started()
    time.sleep(SLOW_SECONDS)
    return "slow"
