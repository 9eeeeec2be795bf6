"""The FastAPI app every benchmark serves, with or without a Moesif middleware.

BENCH_MODE=bare|ours|original picks the middleware; MOESIF_BASE_URI points it at
the loopback collector; MOESIF_QUEUE_PATH is where ours keeps its queue; MOESIF_DURABILITY and
MOESIF_EVENT_QUEUE_SIZE set DURABILITY and EVENT_QUEUE_SIZE (ours only).

`GET /ready` answers the worker's pid and is skipped by the middleware (SKIP), so
that a harness can wait until every worker answers without adding events.
"""
from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

MODE = os.environ.get("BENCH_MODE", "bare")

app = FastAPI()


@app.get("/ready")
async def ready():
    return {"pid": os.getpid()}


def skip_probe(request, response) -> bool:
    return request.url.path == "/ready"


@app.get("/json")
async def small_json():
    return {"hello": "world", "id": 12345, "tags": ["a", "b", "c"]}


@app.post("/echo")
async def echo(request: Request):
    return await request.json()


@app.get("/stream")
async def stream():
    async def chunks():
        for i in range(10):
            yield b"chunk %d " % i + b"x" * 100 + b"\n"

    return StreamingResponse(chunks(), media_type="text/plain")


if MODE in ("ours", "original"):
    from moesifasgi import MoesifMiddleware

    settings = {
        "APPLICATION_ID": "bench-app-id",
        "BASE_URI": os.environ.get("MOESIF_BASE_URI", "http://127.0.0.1:9"),
        "LOG_BODY": True,
        "SKIP": skip_probe,
    }
    if MODE == "ours":
        settings["QUEUE_PATH"] = os.environ["MOESIF_QUEUE_PATH"]
        if os.environ.get("MOESIF_EVENT_QUEUE_SIZE"):
            settings["EVENT_QUEUE_SIZE"] = int(os.environ["MOESIF_EVENT_QUEUE_SIZE"])
        if os.environ.get("MOESIF_BATCH_SIZE"):
            settings["BATCH_SIZE"] = int(os.environ["MOESIF_BATCH_SIZE"])
        if os.environ.get("MOESIF_EVENT_BATCH_TIMEOUT"):
            settings["EVENT_BATCH_TIMEOUT"] = float(os.environ["MOESIF_EVENT_BATCH_TIMEOUT"])
        if os.environ.get("MOESIF_DURABILITY"):
            settings["DURABILITY"] = os.environ["MOESIF_DURABILITY"]
    app.add_middleware(MoesifMiddleware, settings=settings)

if os.environ.get("BENCH_NOWRITE"):
    from moesifasgi.queue_writer import QueueWriter

    QueueWriter.submit = lambda self, row, on_done=None: True
if os.environ.get("BENCH_STATS"):
    import atexit, sys

    def _stats():
        from moesifasgi import queue_writer
        for w in queue_writer._writers.values():
            print(f"writer: committed={w.committed} commits={w.commits}", file=sys.stderr)
    atexit.register(_stats)
if os.environ.get("BENCH_NORECORD"):
    from moesifasgi.middleware import MoesifMiddleware as _M

    async def _noop(self, exchange):
        return None
    _M._record = _noop
