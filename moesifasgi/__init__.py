"""Moesif ASGI middleware with a durable, shared SQLite queue.

    from moesifasgi import MoesifMiddleware
    app.add_middleware(MoesifMiddleware, settings={"APPLICATION_ID": "..."})
"""
from __future__ import annotations

from ._version import __version__
from .middleware import MoesifMiddleware
from .settings import Settings, parse_settings

__all__ = ["MoesifMiddleware", "Settings", "parse_settings", "__version__"]
