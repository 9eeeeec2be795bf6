"""A call whose app task the server cancels is still recorded (a real uvicorn process)."""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import httpx
import pytest

from .conftest import read_events
from .flush_support import wait_until

APP = textwrap.dedent('''
    import asyncio, os
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route
    from moesifasgi import MoesifMiddleware

    async def identify_user(request, response):
        await asyncio.sleep(0.01)  # an async callback: recorded by a task of its own
        return "ann"

    async def chunks():
        for i in range(3):
            yield b"chunk%d;" % i
        await asyncio.sleep(3600)  # never finishes: only the server's deadline ends it

    async def stream(request):
        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/stream", stream)])
    app.add_middleware(MoesifMiddleware, settings={
        "APPLICATION_ID": "app-id", "QUEUE_PATH": os.environ["QUEUE"], "FLUSHER": "external",
        "IDENTIFY_USER": identify_user})
''')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_a_stream_cut_by_uvicorns_graceful_shutdown_deadline_is_recorded_with_what_was_sent(tmp_path, queue_path):
    (tmp_path / "cancel_app.py").write_text(APP)
    port = free_port()
    env = dict(os.environ, QUEUE=queue_path, PYTHONPATH=str(tmp_path))
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "cancel_app:app", "--port", str(port), "--timeout-graceful-shutdown", "1",
         "--log-level", "warning"], cwd=str(tmp_path), env=env)
    received = []
    try:
        assert wait_until(lambda: _listening(port), timeout=30)

        def client() -> None:
            try:
                with httpx.stream("GET", f"http://127.0.0.1:{port}/stream", timeout=60) as response:
                    received.append(response.status_code)
                    for chunk in response.iter_bytes():
                        received.append(chunk)
            except httpx.HTTPError:
                pass  # the server cut the stream: expected

        reader = threading.Thread(target=client)
        reader.start()
        assert wait_until(lambda: b"".join(c for c in received if isinstance(c, bytes)).count(b";") == 3, timeout=30)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) is not None
        reader.join(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    assert received[0] == 200
    [event] = read_events(queue_path)
    assert event["response"]["status"] == 200 and event["user_id"] == "ann"
    assert base64.b64decode(event["response"]["body"]) == b"chunk0;chunk1;chunk2;"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
