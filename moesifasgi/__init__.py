"""Moesif ASGI middleware with a durable, shared SQLite queue.

    from moesifasgi import MoesifMiddleware
    app.add_middleware(MoesifMiddleware, settings={"APPLICATION_ID": "..."})
"""
from __future__ import annotations

from ._version import __version__
from .middleware import MoesifMiddleware
from .outgoing import capture_outgoing
from .profiles import update_companies_batch, update_company, update_user, update_users_batch
from .settings import Settings, parse_settings

__all__ = [
    "MoesifMiddleware",
    "capture_outgoing",
    "Settings",
    "parse_settings",
    "update_user",
    "update_users_batch",
    "update_company",
    "update_companies_batch",
    "__version__",
]
