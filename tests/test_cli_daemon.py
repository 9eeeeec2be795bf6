"""moesif-flush run and drain as real processes against a real loopback collector:
start before the queue exists, drain the backlog on SIGTERM, serve metrics, give
up when Moesif stays unreachable, exit 130 on Ctrl-C with figures that match the
queue's counters."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
import time
import urllib.request

import pytest

from tests.flush_support import cli_process, insert_events, query, wait_until


def _counter(path: str, name: str) -> int:
    return query(path, "SELECT value FROM counters WHERE name = ?", name)[0][0]


def _stop(proc, sig=signal.SIGTERM, timeout=30.0):
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _leads(path: str) -> bool:
    if not os.path.exists(path):  # query() would create it, and this test is about who does
        return False
    try:
        return query(path, "SELECT COUNT(*) FROM leases")[0][0] == 1
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_started_before_the_app_creates_the_queue_and_drains_what_arrives(tmp_path, collector):
    path = str(tmp_path / "not-yet" / "queue.sqlite")
    proc = cli_process("run", "--batch-wait", "0", queue=path, base_uri=collector.url)
    try:
        assert wait_until(lambda: _leads(path), timeout=20), "run never took the lease on the new file"
        tids = insert_events(path, 30)
        assert wait_until(lambda: collector.distinct_transaction_ids() == set(tids), timeout=20)
    finally:
        _, err = _stop(proc)
    assert proc.returncode == 0 and "creating it" in err and "Traceback" not in err


def _lines_of(stream) -> list:
    """The lines of `stream`, collected by a thread as they come (the test polls the list)."""
    lines: list = []
    threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True).start()
    return lines


def test_run_keeps_trying_a_path_it_cannot_create_yet(tmp_path, collector):
    blocker = tmp_path / "state"
    blocker.write_text("not a directory yet")
    path = str(blocker / "queue.sqlite")
    proc = cli_process("run", "--batch-wait", "0", "--renew-interval", "0.2", queue=path, base_uri=collector.url)
    err = _lines_of(proc.stderr)
    try:
        assert wait_until(lambda: any("cannot use the queue file" in line for line in err), timeout=30)
        assert proc.poll() is None
        blocker.unlink()
        assert wait_until(lambda: _leads(path), timeout=20)
        tids = insert_events(path, 5)
        assert wait_until(lambda: collector.distinct_transaction_ids() == set(tids), timeout=20)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert wait_until(lambda: any("stopping" in line for line in err), timeout=10)
    assert sum("cannot use the queue file" in line for line in err) == 1  # once per episode


def test_run_refuses_a_file_that_is_not_a_queue(tmp_path, collector):
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    proc = cli_process("run", queue=str(other), base_uri=collector.url)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "is not a moesifasgi queue" in err and "Traceback" not in err


def _backlog_stuck_behind_503(path, collector, *args):
    insert_events(path, 300)
    collector.fail_for(503, 300, {"Retry-After": "1"})
    proc = cli_process("run", *args, queue=path, base_uri=collector.url)
    assert wait_until(lambda: _leads(path) and collector.stats()["requests"] > 0, timeout=20)
    return proc


def test_drain_on_stop_empties_the_backlog_before_exiting(path, collector):
    proc = _backlog_stuck_behind_503(path, collector, "--drain-on-stop", "60")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # still draining
    collector.reset_faults()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "backlog drained" in err
    assert _counter(path, "pending") == 0 and collector.event_count == 300
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]


def test_without_drain_on_stop_sigterm_leaves_the_backlog_queued(path, collector):
    proc = _backlog_stuck_behind_503(path, collector)
    _, err = _stop(proc)
    assert proc.returncode == 0 and _counter(path, "pending") == 300


def test_drain_on_stop_is_bounded_and_a_second_signal_stops_at_once(path, collector):
    proc = _backlog_stuck_behind_503(path, collector, "--drain-on-stop", "1.5")
    started = time.monotonic()
    _, err = _stop(proc)
    assert proc.returncode == 0 and time.monotonic() - started < 15
    assert "stopping with 300 events still queued" in err and _counter(path, "pending") == 300
    proc = cli_process("run", "--drain-on-stop", "600", queue=path, base_uri=collector.url)
    assert wait_until(lambda: _leads(path), timeout=20)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    _, err = _stop(proc)
    assert proc.returncode == 0 and time.monotonic() - started < 15


def test_run_serves_metrics_on_loopback(path, collector):
    port = _free_port()
    tids = insert_events(path, 40)
    proc = cli_process("run", "--batch-wait", "0", "--metrics-port", str(port), queue=path, base_uri=collector.url)
    try:
        assert wait_until(lambda: collector.distinct_transaction_ids() == set(tids), timeout=20)
        assert wait_until(lambda: _counter(path, "sent") == 40, timeout=20)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                return response.read().decode()
        assert wait_until(lambda: _safe(scrape), timeout=20)
        text = scrape()
    finally:
        _, err = _stop(proc)
    assert proc.returncode == 0
    assert "moesifasgi_events_sent_total 40.0" in text and "moesifasgi_events_pending 0.0" in text
    assert f'moesifasgi_leader{{host="{socket.gethostname()}",pid="{proc.pid}"}} 1.0' in text
    assert 'moesifasgi_post_failures_total{kind="retry"} 0.0' in text


def _safe(fn):
    try:
        return fn()
    except OSError:
        return None


def test_a_metrics_port_in_use_is_a_one_line_error(path, collector):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = cli_process("run", "--metrics-port", str(busy.getsockname()[1]), queue=path, base_uri=collector.url)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "cannot serve metrics" in err and "Traceback" not in err


@pytest.mark.parametrize("uri", ["not-a-url", "ftp://example.com", "http://", "http://host:notaport"])
def test_drain_and_run_refuse_a_bad_base_uri_at_once(path, uri):
    for command in ("drain", "run"):
        proc = cli_process(command, queue=path, base_uri=uri)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1 and "--base-uri" in err and len(err.strip().splitlines()) == 1, err


def test_drain_gives_up_when_moesif_stays_unreachable(path):
    insert_events(path, 20)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    proc = cli_process("drain", "--give-up-after", "2", queue=path, base_uri=dead)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and time.monotonic() - started < 30
    assert "gave up: every post failed for 2 s" in err and "20 events left" in err
    assert "20 left in the queue" in out and "Traceback" not in err


def test_drain_interrupted_exits_130_and_prints_the_queues_figures(path, collector):
    insert_events(path, 3000)
    collector.delay(0.05)
    proc = cli_process("drain", "--batch-size", "50", queue=path, base_uri=collector.url)
    assert wait_until(lambda: _counter(path, "sent") >= 200, timeout=30)
    out, err = _stop(proc, signal.SIGINT)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    sent = _counter(path, "sent")
    assert out.startswith(f"sent {sent} events, ") and f"{3000 - sent} left in the queue" in out


def test_drain_logs_progress_without_a_terminal(path, collector):
    insert_events(path, 600)
    collector.delay(0.05)
    proc = cli_process("drain", "--batch-size", "20", "--concurrency", "1", "--progress-interval", "0.3",
                       queue=path, base_uri=collector.url)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.startswith("sent 600 events")
    assert err.count("drained ") >= 2 and "of 600 events" in err
