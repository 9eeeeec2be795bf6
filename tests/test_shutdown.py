"""What a worker holds in memory reaches the queue file before the process exits,
whatever ends it: a server's SIGTERM handler, the default action, or os._exit
in a multiprocessing child.

Each case runs in its own process: signal handlers and exit hooks are per process.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from moesifasgi import storage
from tests.flush_support import wait_until
from tests.server_support import ROOT, Call, free_port, kill_server, recorded_ids, responds, server_env, start_server

# A process with a writer on the queue file argv[1]; submit_three() queues three events.
PRELUDE = """
import os, signal, sys, threading, time
from moesifasgi import shutdown, writers
path = sys.argv[1]
writer = writers.writer_for(path, 1000)
def submit_three():
    for n in range(3):
        writer.submit((f"tid-{n}", time.time(), '{"n": %d}' % n))
"""


def run_script(body: str, queue: str, **popen) -> subprocess.Popen:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code, queue], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def count(queue: str) -> int:
    return len(recorded_ids(queue))


@pytest.fixture
def queue(tmp_path) -> str:
    path = str(tmp_path / "queue.sqlite")
    storage.connect(path).close()
    return path


def test_a_server_handler_found_at_the_first_call_runs_after_the_idle_writer_committed(queue):
    proc = run_script("""
        seen = []
        def server_handler(signum, frame):
            seen.append(writer.buffered)
        signal.signal(signal.SIGTERM, server_handler)
        shutdown.watch_signals()
        submit_three()
        os.kill(os.getpid(), signal.SIGTERM)
        import sqlite3
        rows = sqlite3.connect(path).execute("SELECT COALESCE(SUM(event_count), 0) FROM events").fetchone()[0]
        print(seen, rows)
    """, queue)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["[0]", "3"]  # the server's handler ran, with nothing left in memory


def test_under_the_default_action_the_process_commits_then_dies_by_the_signal(queue):
    proc = run_script("""
        submit_three()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    """, queue)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert count(queue) == 3


def test_a_signal_the_process_ignores_stays_ignored(queue):
    proc = run_script("""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        shutdown.watch_signals()
        submit_three()
        os.kill(os.getpid(), signal.SIGTERM)
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, shutdown.requested())
    """, queue)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["True", "False"]


def test_ctrl_c_still_raises_keyboard_interrupt_after_the_commit(queue):
    proc = run_script("""
        shutdown.watch_signals()
        submit_three()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)
        except KeyboardInterrupt:
            import sqlite3
            print("interrupted", sqlite3.connect(path).execute("SELECT COALESCE(SUM(event_count), 0) FROM events").fetchone()[0])
    """, queue)
    out, err = proc.communicate(timeout=60)
    assert out.split() == ["interrupted", "3"], err


def test_a_forked_multiprocessing_child_that_ends_with_os_exit_commits_first(queue):
    # granian's workers: fork, the target returns, multiprocessing calls os._exit.
    proc = run_script("""
        import multiprocessing
        writer.close()
        def child():
            writers.writer_for(path, 1000).submit(("tid-child", time.time(), "{}"))
        p = multiprocessing.get_context("fork").Process(target=child)
        p.start()
        p.join(60)
        print(p.exitcode)
    """, queue)
    out, err = proc.communicate(timeout=90)
    assert out.split() == ["0"], err
    assert recorded_ids(queue) == ["tid-child"]


def test_an_idle_uvicorn_worker_signalled_while_its_queue_is_locked_commits_before_it_exits(tmp_path, queue):
    # uvicorn re-raises SIGTERM with the default action once it has no call left:
    # without the handler's wait, the events held behind the lock die with it.
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = start_server("uvicorn", "app_plain", port, server_env(queue, str(tmp_path / "marks")), log)
    calls = []
    lock = None
    try:
        assert wait_until(lambda: proc.poll() is not None or responds(port, calls), 90, 0.2)
        lock = sqlite3.connect(queue, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        calls.extend(Call(port, "/fast").run() for _ in range(3))
        os.kill(proc.pid, signal.SIGTERM)
        # The worker cannot commit while the test holds the lock, so it must still be there.
        assert not wait_until(lambda: proc.poll() is not None, 1.0, 0.05)
        lock.execute("ROLLBACK")
        lock.close()
        lock = None
        assert wait_until(lambda: proc.poll() is not None, 90, 0.05), "the server did not stop"
    finally:
        if lock is not None:
            lock.close()
        if proc.poll() is None:
            kill_server(proc)
        log.close()
    answered = [c.transaction_id for c in calls if c.answered]
    assert len(answered) == 4
    assert set(answered) <= set(recorded_ids(queue)), (tmp_path / "server.log").read_text()


async def test_once_the_process_is_stopping_the_last_chunk_goes_out_only_after_the_commit(queue, monkeypatch):
    # granian stops its event loop as soon as the last responses are out: an event
    # recorded after the app's task returns would never be.
    from moesifasgi import MoesifMiddleware, shutdown
    from tests.asgi_harness import body_receiver, http_scope

    monkeypatch.setattr(shutdown._state, "requested", True)
    committed_when_sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async def send(message):
        if message["type"] == "http.response.start":
            headers = dict(message["headers"])
            send.tid = headers[b"x-moesif-transaction-id"].decode()
        elif not message.get("more_body"):
            committed_when_sent.append(send.tid in recorded_ids(queue))

    middleware = MoesifMiddleware(app, settings={"APPLICATION_ID": "app-id", "QUEUE_PATH": queue})
    await middleware(http_scope("/x"), body_receiver(), send)
    assert committed_when_sent == [True]
