"""A Flask (WSGI) app served by an ASGI server, with moesifasgi around the adapter.

Flask speaks WSGI: an adapter (a2wsgi's `WSGIMiddleware`, or asgiref's
`WsgiToAsgi`) turns it into an ASGI app, and the middleware wraps that.

    pip install flask a2wsgi
    MOESIF_APPLICATION_ID=... uvicorn examples.flask_app:app --workers 2
"""
from __future__ import annotations

import os

from flask import Flask, jsonify, request

from moesifasgi import MoesifMiddleware

try:
    from a2wsgi import WSGIMiddleware as to_asgi
except ImportError:  # asgiref's adapter, which Django installs too
    from asgiref.wsgi import WsgiToAsgi as to_asgi

flask_app = Flask(__name__)


@flask_app.get("/items/<int:item_id>")
def read_item(item_id: int):
    return jsonify(id=item_id, q=request.args.get("q"))


@flask_app.post("/orders")
def create_order():
    order = request.get_json(silent=True) or {}
    return jsonify(order_id=1001, items=order.get("items", [])), 201


def identify_user(req, response):
    # A Starlette Request built from the ASGI scope, not Flask's `request`.
    return req.headers.get("x-user-id")


# The ASGI app to serve; `flask_app` stays the Flask app (for `flask routes`, tests...).
app = MoesifMiddleware(to_asgi(flask_app), settings={
    "APPLICATION_ID": os.environ.get("MOESIF_APPLICATION_ID", "demo-application-id"),
    "IDENTIFY_USER": identify_user,
    "REQUEST_BODY_MASKS": ["password", "card_number"],
})
