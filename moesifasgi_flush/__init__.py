"""moesif-flush: the command line over moesifasgi's queue and flusher.

The flusher itself lives in `moesifasgi.delivery` and the queue in
`moesifasgi.storage`; this package depends on them, never the reverse. The old
module names (`moesifasgi_flush.flusher`, `.queue_store`, ...) stay importable as
aliases of the moved modules, for code written against them.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

_MOVED = {
    "async_db": "moesifasgi.delivery.async_db",
    "backoff": "moesifasgi.delivery.backoff",
    "client": "moesifasgi.delivery.client",
    "delivery": "moesifasgi.delivery.posting",
    "embedded": "moesifasgi.delivery.launcher",
    "flusher": "moesifasgi.delivery.flusher",
    "helper": "moesifasgi.delivery.helper",
    "helper_supervisor": "moesifasgi.delivery.helper_supervisor",
    "lease": "moesifasgi.delivery.lease",
    "profile_delivery": "moesifasgi.delivery.profile_delivery",
    "pump": "moesifasgi.delivery.pump",
    "queue_store": "moesifasgi.storage.queue_store",
    "remote_config": "moesifasgi.delivery.remote_config",
    "local_collector": "moesifasgi.testing.local_collector",
}



class _Alias(importlib.abc.Loader, importlib.abc.MetaPathFinder):
    """`import moesifasgi_flush.flusher` gives moesifasgi.delivery.flusher itself,
    imported only then: every `moesif-flush` command imports this package, and
    loading the whole flusher (httpx, asyncio) up front cost `status` and `check`
    (Kubernetes probes) most of their start-up time."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        parent, _, name = fullname.rpartition(".")
        if parent != __name__ or name not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(_MOVED[spec.name.rpartition(".")[2]])

    def exec_module(self, module: Any) -> None:
        pass  # the moved module ran when it was imported under its own name


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())


def __getattr__(name: str) -> Any:  # `moesifasgi_flush.flusher` as an attribute
    if name in _MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
