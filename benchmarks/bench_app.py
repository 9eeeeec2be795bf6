"""The FastAPI app every benchmark serves, with or without a Moesif middleware.

BENCH_MODE=bare|ours|original|apitally|otel picks the middleware; MOESIF_BASE_URI points
ours and the original at the loopback collector; MOESIF_QUEUE_PATH is where ours keeps its
queue; MOESIF_DURABILITY and MOESIF_EVENT_QUEUE_SIZE set DURABILITY and EVENT_QUEUE_SIZE
(ours only). BENCH_CALLBACKS=1 gives ours and the original a SKIP and an IDENTIFY_USER
callback (what a typical integration has); BENCH_NO_CALLBACKS=1 leaves them no callback at
all (not even the /ready SKIP) and BENCH_NO_LOG_BODY=1 turns LOG_BODY off. The peers
export to BENCH_OTLP_ENDPOINT, a loopback OTLP/HTTP sink: apitally with request and
response headers and bodies captured, OpenTelemetry's ASGI middleware with a
BatchSpanProcessor and the OTLP/HTTP exporter.

`GET /ready` answers the worker's pid and is skipped by ours and the original
(SKIP), so that a harness can wait until every worker answers without adding events.
"""
from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

MODE = os.environ.get("BENCH_MODE", "bare")


def _name_os_threads() -> None:
    """Give every thread started from here on its Python name at the OS level (Python
    3.11 does not), so that the benchmark can read each thread's CPU from
    /proc/<pid>/task/<tid>/comm: the queue writer, the peers' exporters."""
    import ctypes
    import sys
    import threading

    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return

    def name_this_thread(frame, event, arg):  # a profile hook runs first in the new thread
        sys.setprofile(None)
        prctl(15, threading.current_thread().name.encode()[:15], 0, 0, 0)   # PR_SET_NAME

    threading.setprofile(name_this_thread)


_name_os_threads()

app = FastAPI()


@app.get("/ready")
async def ready():
    return {"pid": os.getpid()}


def skip_probe(request, response) -> bool:
    return request.url.path == "/ready"


@app.get("/hello")
async def hello():
    return PlainTextResponse("hello")


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


def _skip(request, response) -> bool:
    return request.url.path in ("/health", "/ready")


def _identify_user(request, response):
    return request.headers.get("x-user-id")


if MODE == "apitally":
    from apitally.fastapi import init as apitally_init

    # The endpoint comes from APITALLY_OTLP_ENDPOINT (set by the benchmark); the token
    # only has to look like one.
    os.environ.setdefault("APITALLY_OTLP_ENDPOINT", os.environ.get("BENCH_OTLP_ENDPOINT", "http://127.0.0.1:9"))
    apitally_init(app, write_token="apt_" + "b" * 24, env="bench",
                  capture_request_headers=True, capture_request_body=True,
                  capture_response_headers=True, capture_response_body=True, capture_logs=False)
elif MODE == "otel":
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _provider = TracerProvider(resource=Resource.create({"service.name": "bench-app"}))
    _endpoint = os.environ.get("BENCH_OTLP_ENDPOINT", "http://127.0.0.1:9")
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_endpoint + "/v1/traces")))
    trace.set_tracer_provider(_provider)
    app.add_middleware(OpenTelemetryMiddleware)

if MODE in ("ours", "original"):
    from moesifasgi import MoesifMiddleware

    settings = {
        "APPLICATION_ID": "bench-app-id",
        "BASE_URI": os.environ.get("MOESIF_BASE_URI", "http://127.0.0.1:9"),
        "LOG_BODY": True,
        "SKIP": skip_probe,
    }
    if os.environ.get("BENCH_NO_CALLBACKS"):   # instructions.py --options: what the callbacks cost
        del settings["SKIP"]
    elif os.environ.get("BENCH_CALLBACKS"):
        settings["SKIP"] = _skip
        settings["IDENTIFY_USER"] = _identify_user
    if os.environ.get("BENCH_NO_LOG_BODY"):   # instructions.py --options: what LOG_BODY costs
        settings["LOG_BODY"] = False
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

def _submit_nothing(self, row, on_done=None) -> bool:
    """QueueWriter.submit for BENCH_NOWRITE and BENCH_TOGGLE=nowrite: the event was
    built, masked and encoded; nothing is written."""
    return True


if os.environ.get("BENCH_NOWRITE"):
    from moesifasgi.queue_writer import QueueWriter

    QueueWriter.submit = _submit_nothing
if os.environ.get("BENCH_STATS"):
    import atexit, sys

    def _stats():
        from moesifasgi import writers
        for w in (writers._writers.peek() or {}).values():
            print(f"writer: committed={w.committed} commits={w.commits}", file=sys.stderr)
    atexit.register(_stats)
if os.environ.get("BENCH_NORECORD"):
    from moesifasgi.middleware import MoesifMiddleware as _M

    async def _noop(self, exchange, strict=None):
        exchange.recorded = True
    _M._finish = _noop
if os.environ.get("BENCH_TOGGLE"):
    # same_process_ab.py: SIGUSR1 switches one thing between A and B inside this
    # worker, so that both are measured in the same process, window after window.
    import signal

    from moesifasgi import writers as _writers_module
    from moesifasgi.queue_writer import COMMIT_INTERVAL as _INTERVAL, QueueWriter as _QW

    _toggle_kind, _, _toggle_value = os.environ["BENCH_TOGGLE"].partition(":")
    _toggle = {"b": False, "submit": _QW.submit}

    def _switch(signum, frame):
        _toggle["b"] = not _toggle["b"]
        if _toggle_kind == "nowrite":   # B: events are built and encoded, nothing is written
            _QW.submit = _submit_nothing if _toggle["b"] else _toggle["submit"]
        elif _toggle_kind == "commit-interval":   # B: the writer's group window, in seconds
            for w in (_writers_module._writers.peek() or {}).values():
                w.commit_interval = float(_toggle_value) if _toggle["b"] else _INTERVAL

    signal.signal(signal.SIGUSR1, _switch)
