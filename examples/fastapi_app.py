"""A FastAPI app with every moesifasgi setting in use, plain and async callbacks alike.

Run it with a real Moesif account:

    MOESIF_APPLICATION_ID=... uvicorn examples.fastapi_app:app --workers 2

or let `python examples/demo.py` run it against a local collector.
"""
from __future__ import annotations

import asyncio
import os
from typing import Optional

from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import StreamingResponse

from moesifasgi import MoesifMiddleware

app = FastAPI(title="moesifasgi example")


@app.get("/health")
def health():
    # The worker's pid lets a supervisor (or examples/demo.py) see every worker answer.
    return {"ok": True, "pid": os.getpid()}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: Optional[str] = None):
    return {"id": item_id, "name": f"item {item_id}", "q": q}


@app.post("/orders", status_code=201)
async def create_order(request: Request):
    order = await request.json()
    return {"order_id": 1001, "items": order.get("items", []), "card_number": order.get("card_number")}


@app.post("/upload")
async def upload(title: str = "", file: Optional[UploadFile] = None):
    data = await file.read() if file else b""
    return {"title": title, "filename": file.filename if file else None, "size": len(data)}


@app.get("/stream")
async def stream():
    async def lines():
        for i in range(5):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(lines(), media_type="text/plain")


@app.get("/events")
async def server_sent_events():
    async def events():
        for i in range(3):
            yield f"event: tick\ndata: {i}\n\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(events(), media_type="text/event-stream")


# -- Moesif settings: every callback may be a plain function or async def ---------------


def skip(request, response):
    # Health probes would drown the real traffic.
    return request.url.path == "/health"


async def identify_user(request, response):
    # Returning None falls back to the Authorization header (JWT `sub`, Basic user).
    return request.headers.get("x-user-id")


def identify_company(request, response):
    return request.headers.get("x-company-id")


async def get_metadata(request, response):
    return {"datacenter": "local-demo", "worker_pid": os.getpid()}


def get_session_token(request, response):
    return request.cookies.get("session")


def mask_event(event):
    # Runs before the event is written to disk: the card number never leaves the app.
    for body in (event.request.body, event.response.body):
        if isinstance(body, dict) and body.get("card_number"):
            body["card_number"] = "****"
    return event


app.add_middleware(
    MoesifMiddleware,
    settings={
        "APPLICATION_ID": os.environ.get("MOESIF_APPLICATION_ID", "demo-application-id"),
        "BASE_URI": os.environ.get("MOESIF_BASE_URI", "https://api.moesif.net"),
        "SKIP": skip,
        "IDENTIFY_USER": identify_user,
        "IDENTIFY_COMPANY": identify_company,
        "GET_METADATA": get_metadata,
        "GET_SESSION_TOKEN": get_session_token,
        "MASK_EVENT_MODEL": mask_event,
        "LOG_BODY": True,
        "API_VERSION": "1.0.0",
        "DEBUG": False,
        # QUEUE_PATH defaults to MOESIF_QUEUE_PATH, then a per-app file in ~/.local/state.
    },
)
