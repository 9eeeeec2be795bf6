"""moesif-flush: the command line over moesifasgi's queue and flusher.

The flusher itself lives in `moesifasgi.delivery` and the queue in
`moesifasgi.storage`; this package depends on them, never the reverse. The old
module names (`moesifasgi_flush.flusher`, `.queue_store`, ...) stay importable as
aliases of the moved modules, for code written against them.
"""
from __future__ import annotations

import importlib
import sys

_MOVED = {
    "async_db": "moesifasgi.delivery.async_db",
    "backoff": "moesifasgi.delivery.backoff",
    "client": "moesifasgi.delivery.client",
    "delivery": "moesifasgi.delivery.posting",
    "embedded": "moesifasgi.delivery.embedded",
    "flusher": "moesifasgi.delivery.flusher",
    "helper": "moesifasgi.delivery.helper",
    "helper_supervisor": "moesifasgi.delivery.helper_supervisor",
    "lease": "moesifasgi.delivery.lease",
    "profile_delivery": "moesifasgi.delivery.profile_delivery",
    "pump": "moesifasgi.delivery.pump",
    "queue_store": "moesifasgi.storage.queue_store",
    "remote_config": "moesifasgi.delivery.remote_config",
}

for _old, _new in _MOVED.items():
    _module = importlib.import_module(_new)
    sys.modules[f"{__name__}.{_old}"] = _module
    globals()[_old] = _module
