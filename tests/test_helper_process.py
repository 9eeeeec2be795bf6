"""FLUSHER="helper" (the default): the workers keep one helper process draining the queue.

Real processes throughout: the helper is `python -m moesifasgi.delivery.helper`,
workers are multiprocessing children, the collector listens on loopback.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import time

from moesifasgi.settings import parse_settings
from moesifasgi.delivery import launcher
from moesifasgi_flush.helper_supervisor import HelperOptions
from tests.flush_support import APP_ID, eventually, insert_events, query, wait_until

QUICK = HelperOptions(check_interval=0.2, lease_seconds=2.0, stop_timeout=3.0)


def settings_for(path, base_uri, **extra):
    return parse_settings({"APPLICATION_ID": APP_ID, "QUEUE_PATH": path, "BASE_URI": base_uri,
                           "FLUSHER": "helper", "EVENT_BATCH_TIMEOUT": 0.05, **extra})


def lease_pid(path):
    rows = query(path, "SELECT pid FROM leases WHERE expires_at >= ?", time.time())
    return rows[0][0] if rows else None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


async def test_one_helper_process_drains_for_the_worker_and_stops_with_it(tmp_path, collector):
    path = str(tmp_path / "q.sqlite")
    tids = insert_events(path, 250)
    launcher.ensure_started(settings_for(path, collector.url), helper_options=QUICK)
    supervisor = launcher.running_helpers()[path]
    assert await eventually(lambda: collector.distinct_transaction_ids() == set(tids))
    child = supervisor.child
    assert child is not None and lease_pid(path) == child.pid != os.getpid()
    assert launcher.running_flushers() == {}  # nothing drains on the worker's own loop
    assert collector.duplicates() == 0
    assert await eventually(lambda: query(path, "SELECT value FROM counters WHERE name='sent'") == [(250,)])
    await launcher.stop_flusher()
    assert child.poll() == 0
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]


async def test_a_crashed_helper_is_replaced_once_its_lease_expires(tmp_path, collector):
    path = str(tmp_path / "q.sqlite")
    launcher.ensure_started(settings_for(path, collector.url), helper_options=QUICK)
    supervisor = launcher.running_helpers()[path]
    assert await eventually(lambda: lease_pid(path) is not None)
    first = lease_pid(path)
    os.kill(first, signal.SIGKILL)
    tids = insert_events(path, 30)
    assert await eventually(lambda: lease_pid(path) not in (None, first))
    assert await eventually(lambda: collector.distinct_transaction_ids() == set(tids))
    assert supervisor.helpers_started == 2
    await launcher.stop_flusher()


async def test_without_a_usable_python_the_worker_drains_itself(tmp_path, collector, monkeypatch, caplog):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    path = str(tmp_path / "q.sqlite")
    tids = insert_events(path, 20)
    launcher.ensure_started(settings_for(path, collector.url), helper_options=QUICK)
    assert await eventually(lambda: collector.distinct_transaction_ids() == set(tids))
    assert lease_pid(path) == os.getpid()
    assert path in launcher.running_flushers()
    assert any("cannot start the flusher helper" in r.getMessage() for r in caplog.records)
    await launcher.stop_flusher()
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]


def _worker(path, base_uri, delivered, results, all_reported):
    async def main():
        launcher.ensure_started(settings_for(path, base_uri), helper_options=QUICK)
        supervisor = launcher.running_helpers()[path]
        # Every event has arrived, and then a second more of supervisor checks
        # (every 0.2 s), each a chance to start a second helper by mistake.
        await asyncio.to_thread(delivered.wait, 120)
        await asyncio.sleep(1.0)
        results.put((os.getpid(), supervisor.helpers_started))
        # Nobody stops before everyone has counted: when the worker that started
        # the helper stops, another one rightly starts a new helper.
        await asyncio.to_thread(all_reported.wait, 120)
        await launcher.stop_flusher()

    asyncio.run(main())


def test_of_several_workers_exactly_one_starts_a_helper_and_every_event_arrives_once(tmp_path, collector):
    path = str(tmp_path / "q.sqlite")
    insert_events(path, 1)  # creates the file before the workers race for it
    tids = insert_events(path, 400, prefix="b")
    ctx = multiprocessing.get_context("spawn")
    results, delivered = ctx.Queue(), ctx.Event()
    all_reported = ctx.Barrier(3)
    workers = [ctx.Process(target=_worker, args=(path, collector.url, delivered, results, all_reported))
               for _ in range(3)]
    for w in workers:
        w.start()
    assert wait_until(lambda: query(path, "SELECT value FROM counters WHERE name = 'sent'") == [(401,)])
    delivered.set()
    started = dict(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(60)
    assert sorted(started.values()) == [0, 0, 1]
    assert set(tids) <= collector.distinct_transaction_ids() and collector.duplicates() == 0
    assert all(w.exitcode == 0 for w in workers)
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]


def _worker_reporting_helper(path, base_uri, results):
    async def main():
        launcher.ensure_started(settings_for(path, base_uri), helper_options=QUICK)
        supervisor = launcher.running_helpers()[path]
        while supervisor.child is None:
            await asyncio.sleep(0.05)
        results.put(supervisor.child.pid)
        await asyncio.sleep(60)

    asyncio.run(main())


def test_the_helper_exits_and_releases_the_lease_when_its_worker_is_killed(tmp_path, collector):
    path = str(tmp_path / "q.sqlite")
    insert_events(path, 1)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    worker = ctx.Process(target=_worker_reporting_helper, args=(path, collector.url, results))
    worker.start()
    helper = results.get(timeout=60)
    assert wait_until(lambda: lease_pid(path) == helper)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(60)
    assert wait_until(lambda: not alive(helper))
    # It stopped gracefully (SIGTERM from PR_SET_PDEATHSIG): the lease was given
    # back at once rather than left to expire.
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]


async def test_without_flock_the_worker_drains_itself(tmp_path, collector, monkeypatch):
    from moesifasgi_flush import helper_supervisor

    monkeypatch.setattr(helper_supervisor, "fcntl", None)  # as on Windows
    path = str(tmp_path / "q.sqlite")
    tids = insert_events(path, 15)
    launcher.ensure_started(settings_for(path, collector.url), helper_options=QUICK)
    assert await eventually(lambda: collector.distinct_transaction_ids() == set(tids))
    assert lease_pid(path) == os.getpid() and launcher.running_helpers()[path].child is None
    await launcher.stop_flusher()
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]


def test_the_helper_does_not_import_the_middleware_stack():
    # Its memory is the host's: the middleware, Starlette and moesifapi stay out.
    import subprocess

    code = ("import sys, moesifasgi_flush.helper; "
            "print(sorted(m for m in ('moesifasgi.middleware', 'starlette', 'moesifapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from moesifasgi import MoesifMiddleware, update_user  # the public names still resolve

    assert MoesifMiddleware.__name__ == "MoesifMiddleware" and callable(update_user)


def test_helper_timings_come_from_the_internal_environment_variables_only_when_they_are_set(monkeypatch):
    # benchmarks/faults.py shortens the lease of scenario 3 this way; unset or
    # unusable, the production defaults hold.
    from moesifasgi.delivery.helper_supervisor import CHECK_INTERVAL
    from moesifasgi.delivery.lease import LEASE_SECONDS

    monkeypatch.delenv("_MOESIF_HELPER_LEASE_SECONDS", raising=False)
    monkeypatch.delenv("_MOESIF_HELPER_CHECK_INTERVAL", raising=False)
    assert (HelperOptions().lease_seconds, HelperOptions().check_interval) == (LEASE_SECONDS, CHECK_INTERVAL)
    monkeypatch.setenv("_MOESIF_HELPER_LEASE_SECONDS", "3")
    monkeypatch.setenv("_MOESIF_HELPER_CHECK_INTERVAL", "0.5")
    assert (HelperOptions().lease_seconds, HelperOptions().check_interval) == (3.0, 0.5)
    for unusable in ("soon", "0", "-1"):
        monkeypatch.setenv("_MOESIF_HELPER_LEASE_SECONDS", unusable)
        assert HelperOptions().lease_seconds == LEASE_SECONDS
