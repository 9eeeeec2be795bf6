"""Moesif ASGI middleware with a durable, shared SQLite queue.

    from moesifasgi import MoesifMiddleware
    app.add_middleware(MoesifMiddleware, settings={"APPLICATION_ID": "..."})

The public names are imported on first use (PEP 562): the flusher's helper
process imports `moesifasgi.storage` and must not pay for the middleware,
Starlette and moesifapi it never uses.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .middleware import MoesifMiddleware
    from .outgoing import capture_outgoing
    from .profiles import update_companies_batch, update_company, update_user, update_users_batch
    from .settings import Settings, parse_settings

_PUBLIC = {
    "MoesifMiddleware": ".middleware",
    "capture_outgoing": ".outgoing",
    "Settings": ".settings",
    "parse_settings": ".settings",
    "update_user": ".profiles",
    "update_users_batch": ".profiles",
    "update_company": ".profiles",
    "update_companies_batch": ".profiles",
}

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


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'moesifasgi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list:
    return sorted(__all__)
