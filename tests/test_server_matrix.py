"""Every call a real server answers during its graceful stop is in the queue file.

Each case starts one framework's app (tests/server_apps/) under one real server
process, makes calls, takes the queue file's write lock so that the worker's
writer is held back (as another worker or the flusher would), sends SIGTERM to
the server while slow calls are in flight, releases the lock, and once the
server has exited reads the queue file: every call whose response the client
received in full must be there, with its transaction id. The selected cases run
side by side, three at a time (the `stops` fixture); each test checks its own.

The fast subset below runs with the rest of the suite. The whole matrix:

    pip install -e '.[test,matrix]' && python -m pytest --matrix tests/test_server_matrix.py

(MATRIX_RESULTS=/some/file.jsonl adds one line per case with the counts.)
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

from tests.flush_support import wait_until
from tests.server_support import (
    Call, free_port, kill_server, recorded_ids, responds, server_env, start_server,
)

# framework -> (module under tests/server_apps, modules it needs)
FRAMEWORKS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "plain-asgi": ("app_plain", ()),
    "fastapi": ("app_fastapi", ("fastapi",)),
    "starlette": ("app_starlette", ("starlette",)),
    "litestar": ("app_litestar", ("litestar",)),
    "litestar-route": ("app_litestar_route", ("litestar",)),
    "quart": ("app_quart", ("quart",)),
    "django": ("app_django", ("django",)),
    "falcon": ("app_falcon", ("falcon",)),
    "flask-a2wsgi": ("app_flask_a2wsgi", ("flask", "a2wsgi")),
    "flask-asgiref": ("app_flask_asgiref", ("flask", "asgiref")),
}

SERVERS: Dict[str, Tuple[str, ...]] = {
    "uvicorn": ("uvicorn",),
    "gunicorn": ("gunicorn", "uvicorn_worker"),
    "hypercorn": ("hypercorn",),
    "granian": ("granian",),
    "daphne": ("daphne",),
}

# What runs with the rest of the suite (packages in the test extra): the
# servers that end by re-raising SIGTERM (uvicorn, and gunicorn's uvicorn
# worker) with apps that have no lifespan (Django, which also cancels its own
# request task once the response is sent; Flask through asgiref), and an app
# with lifespan for contrast.
FAST_SUBSET = {
    ("fastapi", "uvicorn"),
    ("django", "uvicorn"),
    ("flask-asgiref", "gunicorn"),
}

# Servers that may never exit after SIGTERM whatever the middleware does: daphne
# (always) and granian (sometimes, with asgiref's adapter) stop their event loop
# while the WSGI adapter's thread still waits on it to send the response, and
# interpreter exit joins that thread forever. The case still checks the queue,
# after killing the server.
KNOWN_HANGS = {("flask-a2wsgi", "daphne"), ("flask-asgiref", "daphne"), ("flask-asgiref", "granian")}
HANG_DEADLINE = 15.0

FAST_CALLS_BEFORE = 3
SLOW_CALLS = 3
FAST_CALLS_LOCKED = 2
# How long the lock stays held once the slow calls are answered (a stimulus, not
# a wait for something): long enough for a server to exit in the meantime.
LOCK_HELD_AFTER_ANSWERS = 2.0
STARTUP_DEADLINE = 90.0
EXIT_DEADLINE = 90.0
# Cases run side by side (see the `stops` fixture): the fast subset at once.
CONCURRENT_CASES = 3


def _started(marks: str) -> int:
    if not os.path.exists(marks):
        return 0
    with open(marks) as f:
        return len(f.read().split())


def _missing(modules: Tuple[str, ...]) -> List[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _cases():
    for framework in FRAMEWORKS:
        for server in SERVERS:
            marks = [] if (framework, server) in FAST_SUBSET else [pytest.mark.matrix]
            yield pytest.param(framework, server, marks=marks, id=f"{framework}-{server}")


@dataclass
class _Stop:
    """What one case saw: every call it made, when SIGTERM went, how the server ended."""
    calls: List[Call]
    signalled_at: float
    returncode: Optional[int]
    stopped: bool
    recorded: Set[str]
    server_log: str


def _stop_under_calls(framework: str, server: str, tmp_path: Path) -> _Stop:
    """Start the server, make the calls, SIGTERM it under slow calls with the
    writer held back, and read what the queue file holds once it has exited."""
    module, _needs = FRAMEWORKS[framework]
    queue = str(tmp_path / "queue.sqlite")
    marks = str(tmp_path / "slow-started")
    port = free_port()
    env = server_env(queue, marks)
    log = open(tmp_path / "server.log", "wb")
    proc = start_server(server, module, port, env, log)
    calls: List[Call] = []
    lock: Optional[sqlite3.Connection] = None
    try:
        assert wait_until(lambda: proc.poll() is not None or responds(port, calls), STARTUP_DEADLINE, 0.2), \
            "the server did not answer in time"
        assert proc.poll() is None, "the server exited at start"
        calls.extend(Call(port, "/fast").run() for _ in range(FAST_CALLS_BEFORE))

        # Hold the writer back, as another worker or the flusher may: these calls
        # are answered while their events wait in the worker's memory. (Once the
        # worker has written: its first connection is another story.)
        assert wait_until(lambda: len(recorded_ids(queue)) >= len(calls), 60, 0.02), "nothing was committed"
        lock = sqlite3.connect(queue, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        calls.extend(Call(port, "/fast").run() for _ in range(FAST_CALLS_LOCKED))

        slow = [Call(port, "/slow") for _ in range(SLOW_CALLS)]
        threads = [threading.Thread(target=c.run) for c in slow]
        for t in threads:
            t.start()
        calls.extend(slow)
        # (Flask through asgiref runs one call at a time: then the last one is in flight.)
        assert wait_until(lambda: _started(marks) >= SLOW_CALLS, 60, 0.02), "the slow calls did not reach the app"

        signalled_at = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        # The lock outlives the slow calls: their events too wait in memory
        # when the server decides to exit, which it may do right away.
        wait_until(lambda: not any(t.is_alive() for t in threads), EXIT_DEADLINE, 0.02)
        wait_until(lambda: proc.poll() is not None, LOCK_HELD_AFTER_ANSWERS, 0.05)
        lock.execute("ROLLBACK")
        lock.close()
        lock = None

        for t in threads:
            t.join(EXIT_DEADLINE)
        hangs = (framework, server) in KNOWN_HANGS
        stopped = wait_until(lambda: proc.poll() is not None, HANG_DEADLINE if hangs else EXIT_DEADLINE, 0.1)
        assert stopped or hangs, "the server did not stop"
    finally:
        if lock is not None:
            lock.close()
        if proc.poll() is None:
            kill_server(proc)
        log.close()
    return _Stop(calls, signalled_at, proc.returncode, stopped, set(recorded_ids(queue)),
                 (tmp_path / "server.log").read_text(errors="replace")[-4000:])


@pytest.fixture(scope="module")
def stops(request, tmp_path_factory) -> Iterator[Dict[Tuple[str, str], "Future[_Stop]"]]:
    """Every selected case, started at once (CONCURRENT_CASES at a time), each test
    then checking its own. A case spends most of its ~10 s waiting (a slow call, the
    held lock, the server's stop), so one after another they mostly waited; each
    has its own server, port, queue file and lock, as when run alone."""
    cases = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "originalname", None) == _CASE_TEST and callspec is not None:
            framework, server = callspec.params["framework"], callspec.params["server"]
            if not _missing(FRAMEWORKS[framework][1] + SERVERS[server]):
                cases.append((framework, server))
    with ThreadPoolExecutor(CONCURRENT_CASES, thread_name_prefix="matrix-case") as pool:
        yield {(framework, server): pool.submit(_stop_under_calls, framework, server,
                                                tmp_path_factory.mktemp(f"{framework}-{server}"))
               for framework, server in cases}


@pytest.mark.parametrize("framework, server", list(_cases()))
def test_every_call_answered_during_a_graceful_stop_is_in_the_queue(stops, framework, server):
    module, needs = FRAMEWORKS[framework]
    missing = _missing(needs + SERVERS[server])
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (pip install -e '.[test,matrix]')")
    run = stops[(framework, server)].result()

    answered = [c for c in run.calls if c.answered]
    lost = [c.path for c in answered if c.transaction_id not in run.recorded]
    during_stop = [c for c in answered if c.path == "/slow" and c.finished_at > run.signalled_at]
    _report(framework, server, len(answered), len([c for c in answered if c.transaction_id in run.recorded]),
            len(during_stop), run.returncode, run.stopped)
    assert all(c.transaction_id for c in answered), run.server_log
    assert not lost, f"{len(lost)} of {len(answered)} answered calls are not in the queue: {lost}\n{run.server_log}"


_CASE_TEST = test_every_call_answered_during_a_graceful_stop_is_in_the_queue.__name__


def _report(framework: str, server: str, answered: int, recorded: int, during_stop: int, code: Optional[int],
            stopped: bool) -> None:
    out = os.environ.get("MATRIX_RESULTS")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"framework": framework, "server": server, "answered": answered,
                                "recorded": recorded, "answered_during_stop": during_stop,
                                "exit_code": code, "stopped_by_itself": stopped}) + "\n")
