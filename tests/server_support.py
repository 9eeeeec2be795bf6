"""Real servers for the tests: start one on a loopback port, call it, stop it.

The apps are in tests/server_apps/; each server is started the way its
documentation says, as its own process group so that nothing outlives a test.
"""
from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from typing import IO, Dict, List, Optional

from moesifasgi.storage import queue_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def server_env(queue: str, marks: str, **extra: str) -> Dict[str, str]:
    """The app's queue file, write-only workers (the test reads the file), the slow-call marks."""
    return dict(os.environ, MOESIF_QUEUE_PATH=queue, MOESIF_FLUSHER="external", MATRIX_MARKS=marks,
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def start_server(server: str, module: str, port: int, env: Dict[str, str], log: IO[bytes]) -> subprocess.Popen:
    return subprocess.Popen(server_command(server, f"tests.server_apps.{module}:app", port), cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_server(proc: subprocess.Popen) -> None:
    """SIGKILL the server's whole process group (its workers too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(server: str, target: str, port: int) -> List[str]:
    py = sys.executable
    if server == "uvicorn":
        return [py, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), target]
    if server == "gunicorn":
        command = [py, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "1",
                   "-b", f"127.0.0.1:{port}", "--graceful-timeout", "30", target]
        if _gunicorn_has_control_socket():
            command.insert(3, "--no-control-socket")  # one per user by default: cases would share it
        return command
    if server == "hypercorn":
        return [py, "-m", "hypercorn", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "30", target]
    if server == "granian":
        return [py, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", target]
    if server == "daphne":
        return [py, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), target]
    raise ValueError(server)


def _gunicorn_has_control_socket() -> bool:
    import gunicorn

    return tuple(int(p) for p in gunicorn.__version__.split(".")[:2]) >= (27, 0)


class Call:
    """One GET with a fresh connection; `answered` once the whole response arrived."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.status: Optional[int] = None
        self.body = b""
        self.transaction_id: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.finished_at: Optional[float] = None

    def run(self) -> "Call":
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", self.path, headers={"Connection": "close"})
            response = conn.getresponse()
            self.body = response.read()
            self.status = response.status
            self.transaction_id = response.getheader("x-moesif-transaction-id")
        except Exception as exc:  # a server that drops in-flight calls: not answered
            self.error = exc
        finally:
            conn.close()
            self.finished_at = time.monotonic()
        return self

    @property
    def answered(self) -> bool:
        return self.status == 200 and self.error is None and self.body in (b"fast", b"slow")


def responds(port: int, calls: List[Call]) -> bool:
    call = Call(port, "/fast").run()
    if call.answered:
        calls.append(call)  # a probe that was answered counts like any other call
    return call.answered


def recorded_ids(path: str) -> List[str]:
    """The transaction ids committed to the queue at `path` so far (read-only: a
    file the server has not created yet is not created here)."""
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [event.transaction_id for event in queue_store.stored_events(conn)]
    except sqlite3.OperationalError:  # the server is still creating its tables
        return []
    finally:
        conn.close()
