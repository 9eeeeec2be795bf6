"""Every branch for an old version of a library we run beside, in one place.

The package supports FastAPI 0.78 (Starlette 0.19, pydantic 1) up to the latest
releases; the README's "Supported versions" says which are tested. A branch goes
here, named for the version that needs it, so that it can be deleted when that
version is dropped.
"""
from __future__ import annotations

from typing import Any


def is_starlette_testclient_session(session: Any, url: str) -> bool:
    """Starlette before 0.21 (FastAPI before 0.87) builds its TestClient on
    requests: a Session whose adapter calls the app in this process. Its calls
    never leave the process, so they are not outgoing calls, just as httpx's
    ASGITransport under the newer TestClient is not."""
    try:
        adapter = session.get_adapter(url)
    except Exception:
        return False  # no adapter for this scheme: requests will tell the caller
    return type(adapter).__module__.startswith("starlette.")
