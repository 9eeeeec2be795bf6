from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import timeit


from moesifasgi.settings import parse_settings
from moesifasgi.delivery import launcher
from tests.flush_support import APP_ID, FAST, eventually, insert_events, query, wait_until


def settings_for(path, base_uri, **extra):
    return parse_settings({"APPLICATION_ID": APP_ID, "QUEUE_PATH": path, "BASE_URI": base_uri, "FLUSHER": "in-process",
                           **extra})


async def test_the_first_call_starts_one_flusher_that_drains_and_later_calls_are_cheap(tmp_path, collector):
    path = str(tmp_path / "q.sqlite")
    settings = settings_for(path, collector.url)
    tids = insert_events(path, 40)
    launcher.ensure_started(settings, FAST)
    first = launcher.running_flushers()[path]
    launcher.ensure_started(settings, FAST)
    assert launcher.running_flushers() == {path: first}
    # The best of many short rounds: on a busy machine most rounds run without
    # being preempted, where one long round would not.
    per_call = min(timeit.repeat(lambda: launcher.ensure_started(settings), number=1000, repeat=60)) / 1000
    assert per_call < 1e-6  # ~100 ns on an idle machine; generous for a loaded CI
    assert await eventually(lambda: collector.distinct_transaction_ids() == set(tids))
    await launcher.stop_flusher()
    assert launcher.running_flushers() == {}
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]


async def test_nothing_drains_in_a_worker_when_the_flusher_is_external(tmp_path, collector):
    path = str(tmp_path / "q.sqlite")
    insert_events(path, 5)
    launcher.ensure_started(settings_for(path, collector.url, FLUSHER="external"), FAST)
    await asyncio.sleep(0.3)
    assert launcher.running_flushers() == {}
    assert collector.event_count == 0 and query(path, "SELECT COUNT(*) FROM leases") == [(0,)]
    await launcher.stop_flusher()


async def test_a_broken_queue_path_never_raises_into_the_app(tmp_path, collector, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = settings_for(str(blocker / "q.sqlite"), collector.url)
    with caplog.at_level(logging.WARNING, logger="moesifasgi.delivery"):
        launcher.ensure_started(settings, FAST)  # the directory cannot exist: a file is in the way
        assert await eventually(lambda: any("cannot use the queue file" in r.getMessage() for r in caplog.records))
        await asyncio.sleep(1.0)  # several more lease attempts, each failing: still one warning
        launcher.ensure_started(settings, FAST)
        await launcher.stop_flusher(timeout=1)
    warnings = [r for r in caplog.records if "cannot use the queue file" in r.getMessage()]
    assert len(warnings) == 1 and str(blocker) in warnings[0].getMessage()


def test_called_outside_an_event_loop_it_logs_and_carries_on(tmp_path):
    launcher.ensure_started(settings_for(str(tmp_path / "q.sqlite"), "http://127.0.0.1:9"), FAST)
    assert launcher.running_flushers() == {}


def _child_owner(path: str, base_uri: str, results) -> None:
    async def main():
        launcher.ensure_started(settings_for(path, base_uri), FAST)
        flusher = launcher.running_flushers()[path]
        results.put((os.getpid(), flusher.owner))
        await launcher.stop_flusher()

    asyncio.run(main())


async def test_a_forked_worker_starts_its_own_flusher_instead_of_using_the_parents(tmp_path, collector):
    path = str(tmp_path / "q.sqlite")
    launcher.ensure_started(settings_for(path, collector.url), FAST)
    parent_owner = launcher.running_flushers()[path].owner
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_child_owner, args=(path, collector.url, results))
    child.start()
    pid, owner = results.get(timeout=60)
    child.join(60)
    await launcher.stop_flusher()
    assert child.exitcode == 0
    assert owner != parent_owner and owner.split(":")[-2] == str(pid)


def _embedded_worker(path: str, base_uri: str, delivered, results) -> None:
    async def main():
        launcher.ensure_started(settings_for(path, base_uri), FAST)
        flusher = launcher.running_flushers()[path]
        # Nobody stops before every event arrived: a leader that stopped early
        # would rightly hand the rest to another worker.
        await asyncio.to_thread(delivered.wait, 120)
        await launcher.stop_flusher()
        results.put((os.getpid(), flusher.sent))

    asyncio.run(main())


def test_of_several_worker_processes_exactly_one_leads_and_every_event_arrives_once(tmp_path, collector):
    path = str(tmp_path / "q.sqlite")
    tids = insert_events(path, 300)
    ctx = multiprocessing.get_context("spawn")
    results, delivered = ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=_embedded_worker, args=(path, collector.url, delivered, results))
               for _ in range(3)]
    for w in workers:
        w.start()
    # Acknowledged (deleted and counted), not only received: a flusher stopped
    # between the post and its acknowledgement does not count that batch as sent.
    assert wait_until(lambda: query(path, "SELECT value FROM counters WHERE name = 'sent'") == [(300,)])
    delivered.set()
    sent = dict(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(60)
    assert sorted(sent.values()) == [0, 0, 300]
    assert collector.distinct_transaction_ids() == set(tids) and collector.duplicates() == 0
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]
    assert all(w.exitcode == 0 for w in workers)


def test_flusher_embedded_is_accepted_as_the_old_name_of_helper_in_settings_and_the_environment(monkeypatch):
    monkeypatch.delenv("MOESIF_FLUSHER", raising=False)  # the suite's conftest sets "external"
    assert parse_settings({"APPLICATION_ID": APP_ID}).flusher == "helper"
    assert parse_settings({"APPLICATION_ID": APP_ID, "FLUSHER": "embedded"}).flusher == "helper"
    monkeypatch.setenv("MOESIF_FLUSHER", "embedded")
    assert parse_settings({"APPLICATION_ID": APP_ID}).flusher == "helper"
