"""What recording costs the app's own work: slow callbacks, many-member gzip bodies.

    python benchmarks/recording_hold.py

Prints, for a real uvicorn server on loopback:
- the delay of a response's BackgroundTask behind a 1 s async IDENTIFY_USER
  (DURABILITY "batched": it should not wait for the callback at all);
- the response time with a 20 s async IDENTIFY_USER under DURABILITY "strict"
  (bounded by CALLBACK_TIMEOUT, 2 s by default);
and, in process, the event-loop time bodies.encode_body spends on a 256 KB gzip
body made of one-byte members (linear in the input, capped at MAX_GZIP_MEMBERS).
"""
from __future__ import annotations

import gzip
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit

import httpx

APP = textwrap.dedent('''
    import asyncio, os, time
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from moesifasgi import MoesifMiddleware

    ran = {}

    async def slow_user(request, response):
        await asyncio.sleep(float(os.environ["CALLBACK_SECONDS"]))
        return "ann"

    async def work(request):
        started = time.monotonic()
        async def background():
            ran["delay"] = time.monotonic() - started
        return JSONResponse({"ok": True}, background=BackgroundTask(background))

    async def last(request):
        return JSONResponse(ran)

    app = Starlette(routes=[Route("/work", work), Route("/last", last)])
    app.add_middleware(MoesifMiddleware, settings={
        "APPLICATION_ID": "bench", "QUEUE_PATH": os.environ["QUEUE"], "FLUSHER": "external",
        "IDENTIFY_USER": slow_user, "DURABILITY": os.environ["DURABILITY"]})
''')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(directory: str, durability: str, callback_seconds: float) -> "tuple[subprocess.Popen, str]":
    with open(os.path.join(directory, "hold_app.py"), "w") as f:
        f.write(APP)
    port = free_port()
    env = dict(os.environ, QUEUE=os.path.join(directory, f"{durability}.sqlite"), DURABILITY=durability,
               CALLBACK_SECONDS=str(callback_seconds),
               PYTHONPATH=os.pathsep.join(filter(None, [directory, os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "hold_app:app", "--port", str(port),
                                "--log-level", "warning"], env=env, cwd=directory)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/last", timeout=30)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        process, url = serve(directory, "batched", 1.0)
        try:
            delays = []
            for _ in range(5):  # the first call of a fresh server also pays its warm-up
                before = httpx.get(url + "/last").json().get("delay")
                httpx.get(url + "/work", timeout=30)
                deadline = time.monotonic() + 30
                while (last := httpx.get(url + "/last").json()).get("delay") == before and time.monotonic() < deadline:
                    time.sleep(0.05)
                delays.append(last["delay"] * 1000)
            print(f"batched, 1 s async IDENTIFY_USER: BackgroundTask ran {statistics.median(delays):.1f} ms "
                  f"after the handler started (median of 5; each: {', '.join(f'{d:.1f}' for d in delays)})")
        finally:
            process.terminate()
            process.wait(10)
        process, url = serve(directory, "strict", 20.0)
        try:
            started = time.monotonic()
            httpx.get(url + "/work", timeout=60)
            print(f"strict, 20 s async IDENTIFY_USER, CALLBACK_TIMEOUT 2 s: response after "
                  f"{time.monotonic() - started:.2f} s")
        finally:
            process.terminate()
            process.wait(10)

    from moesifasgi.bodies import MAX_BODY_BYTES, encode_body
    member = gzip.compress(b"x", 9)
    body = member * (MAX_BODY_BYTES // len(member))
    seconds = min(timeit.repeat(lambda: encode_body(body, None, "gzip"), number=5, repeat=5)) / 5
    print(f"gzip body of {len(body) // 1024} KB in {len(body) // len(member)} one-byte members: "
          f"{seconds * 1000:.2f} ms to encode")


if __name__ == "__main__":
    main()
