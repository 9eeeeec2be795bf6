"""The whole pipeline in one command, no Moesif account needed.

    python examples/demo.py

1. starts a Moesif-compatible collector on 127.0.0.1;
2. serves examples/fastapi_app.py under uvicorn with 2 workers, BASE_URI pointing
   at that collector and the queue in a temporary directory;
3. sends a burst of varied requests (JSON, a form upload, streaming, server-sent
   events, a skipped health probe, a JWT-authenticated user);
4. shows `moesif-flush status` while the backlog drains;
5. prints how many events the collector received and one of them;
6. stops everything; exits non-zero if an event is missing or anything failed.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from moesifasgi.testing.local_collector import LocalCollector  # noqa: E402

APPLICATION_ID = "demo-application-id"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_workers(base: str, workers: int, timeout: float = 120.0) -> None:
    """Wait until every worker answers /health (which SKIP leaves out of the
    events). The port is bound before the workers have imported the app, which
    takes seconds on a busy machine; each probe goes on a fresh connection so
    that each may reach another worker."""
    async def answering() -> set:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as client:
            answers = await asyncio.gather(*(client.get("/health") for _ in range(4 * workers)),
                                           return_exceptions=True)
        return {a.json().get("pid") for a in answers if isinstance(a, httpx.Response) and a.status_code == 200}

    seen: set = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(seen)} of {workers} workers answered {base}/health within {timeout:g} s")
        seen |= asyncio.run(answering())
        time.sleep(0.05)


def jwt(sub: str) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'sub': sub})}.sig"


def send_burst(base: str, rounds: int, clients: int = 4) -> int:
    """Send varied requests from `clients` clients at once (as a real app is
    called); return how many should become events."""
    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(lambda n: _send_rounds(base, range(n, rounds, clients)), range(clients)))


def _send_rounds(base: str, rounds: range) -> int:
    expected = 0
    with httpx.Client(base_url=base, timeout=60) as client:
        for i in rounds:
            checks = [
                client.get(f"/items/{i}", params={"q": "demo"}, headers={"x-company-id": "acme"}),
                client.post("/orders", json={"items": [i], "card_number": "4111111111111111"},
                            headers={"x-user-id": f"user-{i}"}),
                client.post("/upload", data={"title": "photo"}, files={"file": ("beach.jpg", b"\xff\xd8" * 500)}),
                client.get("/stream"),
                client.get("/events"),
                client.get(f"/items/{i}", headers={"Authorization": f"Bearer {jwt('jwt-user-' + str(i))}"}),
            ]
            for response in checks:
                response.raise_for_status()
            expected += len(checks)
            assert client.get("/health").status_code == 200  # skipped by SKIP: no event
    return expected


def status(queue_path: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "moesifasgi_flush.cli", "--queue", queue_path, "status", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)


def main(rounds: int = 20, timeout: float = 120.0) -> int:
    workdir = tempfile.mkdtemp(prefix="moesif-demo-")
    queue_path = os.path.join(workdir, "queue.sqlite")
    collector = LocalCollector(application_id=APPLICATION_ID).start()
    port = free_port()
    env = dict(os.environ, MOESIF_APPLICATION_ID=APPLICATION_ID, MOESIF_BASE_URI=collector.url,
               MOESIF_QUEUE_PATH=queue_path, PYTHONPATH=ROOT)
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port), "--workers", "2",
         "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )
    ok = False
    try:
        wait_for_workers(f"http://127.0.0.1:{port}", 2)
        print(f"collector on {collector.url}; app on http://127.0.0.1:{port} (2 workers); queue {queue_path}")
        expected = send_burst(f"http://127.0.0.1:{port}", rounds)
        print(f"sent {expected + rounds} requests ({rounds} health probes are skipped): expecting {expected} events")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = status(queue_path)
            leader = s.get("leader") or {}
            print(f"  status: pending={s['pending']} in_flight={s['in_flight']} dropped={s['dropped']} "
                  f"leader_pid={leader.get('pid')} received={len(collector.distinct_transaction_ids())}")
            if len(collector.distinct_transaction_ids()) >= expected and s["pending"] == 0:
                break
            time.sleep(0.5)
        received = len(collector.distinct_transaction_ids())
        print(f"\nthe collector received {received} distinct events ({collector.duplicates()} duplicates)")
        orders = [e for e in collector.events if e["request"]["uri"].endswith("/orders")]
        if orders:
            print("one of them (note the masked card number):")
            print(json.dumps(orders[0], indent=2)[:3000])
        ok = received == expected and not collector.header_errors
        if collector.header_errors:
            print("header problems:", collector.header_errors[:3])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        collector.stop()
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
