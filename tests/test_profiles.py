"""User and company profiles: validated, queued durably, delivered in batches."""
from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from moesifapi.models import CompanyModel, UserModel

from moesifasgi import profiles, queue_writer, storage, writers
from moesifasgi_flush.async_db import AsyncDB
from moesifasgi_flush.client import MoesifClient
from moesifasgi.testing.local_collector import LocalCollector
from moesifasgi_flush.profile_delivery import (
    deliver_profiles, profile_counts, requeue_profile_dead_letters)
from moesifasgi.delivery.posting import Delivery
from moesifasgi.delivery.pump import Pump
from tests.flush_support import PATIENCE, wait_until


def queued(path):
    conn = sqlite3.connect(path)
    try:
        return [(kind, pid, json.loads(body)) for kind, pid, body in
                conn.execute("SELECT kind, profile_id, body FROM profiles ORDER BY id")]
    finally:
        conn.close()


def counts(path):
    conn = storage.connect(path)
    try:
        return profile_counts(conn)
    finally:
        conn.close()


@pytest.fixture
def collector():
    with LocalCollector() as running:
        yield running


def problem_counts(path):
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT reason, count FROM problem_counts"))
    finally:
        conn.close()


@pytest.mark.parametrize("profile", [{"metadata": {"a": 1}}, {"user_id": ""}, {"user_id": None}, None, {},
                                     UserModel(metadata={"a": 1}), '{"company_id": "c"}', 42, "not json"])
def test_an_invalid_user_profile_never_raises_is_left_out_and_counted(queue_path, profile, caplog):
    assert profiles.update_user(profile, queue_path=queue_path).result(10) == 0
    assert profiles.update_users_batch([{"user_id": "ok"}, profile], queue_path=queue_path).result(10) == 1
    assert [pid for _, pid, _ in queued(queue_path)] == ["ok"]
    assert counts(queue_path)["profiles_dropped"] == 2
    assert problem_counts(queue_path) == {"profile-invalid:user": 2}
    assert len([r for r in caplog.records if "user profile was not queued" in r.getMessage()]) == 1


def test_an_invalid_company_profile_never_raises(queue_path):
    assert profiles.update_company({"company_domain": "acme.com"}, queue_path=queue_path).result(10) == 0
    assert profiles.update_companies_batch([CompanyModel(company_domain="acme.com")],
                                           queue_path=queue_path).result(10) == 0
    assert problem_counts(queue_path) == {"profile-invalid:company": 2}


@pytest.mark.parametrize("batch", [{"user_id": "u1"}, None, 42, "u1"])
def test_a_batch_that_is_not_a_list_never_raises_and_is_counted(queue_path, batch):
    assert profiles.update_users_batch(batch, queue_path=queue_path).result(10) == 0
    assert problem_counts(queue_path) == {"profile-invalid:user": 1}


def test_a_middleware_profile_update_inside_a_request_never_becomes_a_500(queue_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from moesifasgi import MoesifMiddleware

    middleware = MoesifMiddleware(settings={"APPLICATION_ID": "app-id", "QUEUE_PATH": queue_path})
    app = FastAPI()

    @app.get("/signup")
    def signup():
        futures = [middleware.update_user(None), middleware.update_company({}),
                   middleware.update_users_batch([{}]), middleware.update_companies_batch(None)]
        return {"queued": [f.result(10) for f in futures]}

    assert TestClient(app).get("/signup").json() == {"queued": [0, 0, 0, 0]}


def test_dicts_models_and_json_text_are_queued_as_moesif_expects_them(queue_path):
    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    assert profiles.update_user(UserModel(user_id="u1", company_id="c1", modified_time=when,
                                          metadata={"email": "a@example.com"}), queue_path=queue_path).result() == 1
    profiles.update_users_batch([{"user_id": 7, "metadata": {"plan": "pro"}}, '{"user_id": "u3"}'],
                                queue_path=queue_path)
    profiles.update_company(CompanyModel(company_id="c1", company_domain="acme.com"), queue_path=queue_path)
    profiles.update_companies_batch([{"company_id": "c2", "metadata": {"seats": 5}}], queue_path=queue_path)
    rows = queued(queue_path)
    assert [(kind, pid) for kind, pid, _ in rows] == [
        ("user", "u1"), ("user", "7"), ("user", "u3"), ("company", "c1"), ("company", "c2")]
    first = rows[0][2]
    assert first == {"user_id": "u1", "company_id": "c1", "modified_time": "2026-01-02T03:04:05",
                     "metadata": {"email": "a@example.com"}}  # a model's unset fields are not sent
    assert rows[1][2]["user_id"] == "7" and rows[1][2]["metadata"] == {"plan": "pro"}
    assert rows[3][2]["company_domain"] == "acme.com"
    stamped = datetime.datetime.strptime(rows[2][2]["modified_time"], "%Y-%m-%dT%H:%M:%S.%f")
    now_utc = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs(stamped - now_utc) < datetime.timedelta(minutes=1)
    assert counts(queue_path)["profiles_pending"] == 5


async def test_inside_a_running_loop_the_call_returns_before_the_write(queue_path, monkeypatch):
    insert = queue_writer.QueueWriter._insert
    release = threading.Event()

    def held_insert(self, *args):
        release.wait(60)  # the write cannot finish before the test lets it
        return insert(self, *args)

    monkeypatch.setattr(queue_writer.QueueWriter, "_insert", held_insert)
    future = profiles.update_user({"user_id": "u1"}, queue_path=queue_path)
    # Had the call waited for the write, it would have returned only after
    # release.wait timed out, with the future done.
    assert not future.done()
    release.set()
    assert await asyncio.wrap_future(future) == 1
    assert [pid for _, pid, _ in queued(queue_path)] == ["u1"]


def test_the_queue_comes_from_the_argument_then_the_middleware_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "_registered", [])
    monkeypatch.delenv("MOESIF_QUEUE_PATH", raising=False)
    monkeypatch.delenv("MOESIF_APPLICATION_ID", raising=False)
    assert profiles.update_user({"user_id": "u"}).result(10) == 0  # logged, never raised
    monkeypatch.setenv("MOESIF_QUEUE_PATH", str(tmp_path / "env.sqlite"))
    profiles.update_user({"user_id": "from-env"})
    profiles.use_queue_path(str(tmp_path / "mw.sqlite"))
    profiles.update_user({"user_id": "from-middleware"})
    profiles.update_user({"user_id": "explicit"}, queue_path=str(tmp_path / "arg.sqlite"))
    assert [pid for _, pid, _ in queued(str(tmp_path / "env.sqlite"))] == ["from-env"]
    assert [pid for _, pid, _ in queued(str(tmp_path / "mw.sqlite"))] == ["from-middleware"]
    assert [pid for _, pid, _ in queued(str(tmp_path / "arg.sqlite"))] == ["explicit"]


def test_beyond_the_cap_new_profiles_are_dropped_and_counted(queue_path, monkeypatch):
    monkeypatch.setattr(profiles, "MAX_PENDING_PROFILES", 2)
    assert profiles.update_users_batch([{"user_id": f"u{i}"} for i in range(3)], queue_path=queue_path).result() == 2
    assert counts(queue_path)["profiles_pending"] == 2 and counts(queue_path)["profiles_dropped"] == 1


def test_an_existing_version_1_queue_gains_the_profiles_table_and_keeps_its_rows(queue_path, monkeypatch):
    shipped = storage.migrations()
    monkeypatch.setattr(storage, "migrations", lambda: shipped[:1])
    conn = storage.connect(queue_path)
    conn.execute("INSERT INTO dead_letters (transaction_id, created_at, body, reason, failed_at) "
                 "VALUES ('t', 1, '{}', 'old', 2)")
    conn.close()
    monkeypatch.setattr(storage, "migrations", lambda: shipped)
    conn = storage.connect(queue_path)
    assert storage.schema_version(conn) == storage.latest_version()
    assert conn.execute("SELECT kind FROM dead_letters").fetchall() == [("event",)]
    conn.close()


_WRITER_SCRIPT = """
import asyncio, sys
from moesifapi.models import UserModel
from moesifasgi import profiles
path = sys.argv[1]
profiles.update_user(UserModel(user_id="u1", metadata={"plan": "pro"}), queue_path=path)
profiles.update_users_batch([{"user_id": "u2"}, {"user_id": "u3"}], queue_path=path)

async def main():
    # Inside a loop: handed to the writer thread and not awaited; exit must still commit it.
    profiles.update_companies_batch([{"company_id": "c1"}, {"company_id": "c2"}], queue_path=path)

asyncio.run(main())
"""


async def test_profiles_queued_by_a_process_that_exited_are_delivered_to_the_collector(queue_path, collector):
    subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITER_SCRIPT), queue_path], check=True, timeout=60)
    assert counts(queue_path)["profiles_pending"] == 5
    async with MoesifClient("app-id", collector.url) as client:
        stats = await deliver_profiles(queue_path, client, batch_size=2)
    assert (stats.users_sent, stats.companies_sent, stats.error) == (3, 2, None)
    assert [u["user_id"] for u in collector.users] == ["u1", "u2", "u3"]
    assert collector.users[0]["metadata"] == {"plan": "pro"}
    assert [c["company_id"] for c in collector.companies] == ["c1", "c2"]
    assert [path for _, path, _, _ in collector.request_log] == ["/v1/users/batch"] * 2 + ["/v1/companies/batch"]
    assert collector.header_errors == [] and queued(queue_path) == []
    assert counts(queue_path)["profiles_sent"] == 5 and counts(queue_path)["profiles_pending"] == 0


@pytest.mark.parametrize("status, outcome", [(503, "retry"), (429, "retry"), (401, "auth")])
async def test_a_failed_post_leaves_the_profiles_queued_for_a_later_round(queue_path, collector, status, outcome):
    profiles.update_users_batch([{"user_id": "u1"}, {"user_id": "u2"}], queue_path=queue_path)
    collector.fail_next(status)
    conn = storage.connect(queue_path)
    async with MoesifClient("app-id", collector.url) as client:
        failed = await deliver_profiles(conn, client)
        assert (failed.sent, failed.released, failed.error) == (0, 2, outcome)
        assert conn.execute("SELECT COUNT(*) FROM profiles WHERE claimed_until = 0").fetchone()[0] == 2
        assert (await deliver_profiles(conn, client)).users_sent == 2
    conn.close()
    assert [u["user_id"] for u in collector.users] == ["u1", "u2"]


async def test_a_profile_rejected_alone_is_dead_lettered_and_the_others_are_delivered(queue_path, collector):
    profiles.update_users_batch([{"user_id": f"u{i}"} for i in range(1, 4)], queue_path=queue_path)
    collector.fail_next(400, count=2)  # the batch of three, then u1 alone
    async with MoesifClient("app-id", collector.url) as client:
        stats = await deliver_profiles(queue_path, client)
    assert (stats.users_sent, stats.dead_lettered, stats.error) == (2, 1, None)
    assert [u["user_id"] for u in collector.users] == ["u2", "u3"]
    conn = storage.connect(queue_path)
    row = conn.execute("SELECT transaction_id, status, reason, kind FROM dead_letters").fetchone()
    assert row == ("user:u1", 400, "profile rejected", "user")
    assert profile_counts(conn)["profile_dead_letters"] == 1
    assert requeue_profile_dead_letters(conn) == 1
    assert conn.execute("SELECT kind, profile_id FROM profiles").fetchall() == [("user", "u1")]
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    conn.close()


async def test_the_leaders_loop_delivers_profiles_as_they_arrive(queue_path, collector):
    db = AsyncDB(queue_path)
    async with MoesifClient("app-id", collector.url) as client:
        pump = Pump(db, Delivery(db, client, "leader"), "leader", idle_poll=0.05)  # the events' loop
        task = asyncio.ensure_future(pump.run())
        await asyncio.wrap_future(profiles.update_company({"company_id": "c9"}, queue_path=queue_path))
        deadline = time.monotonic() + PATIENCE
        while not collector.companies and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        pump.request_stop()
        await asyncio.wait_for(task, PATIENCE)
    await db.close()
    assert [c["company_id"] for c in collector.companies] == ["c9"]
    assert pump.profiles_sent == 1


def test_a_profile_update_and_events_of_one_process_are_committed_by_the_same_thread(queue_path, monkeypatch):
    from moesifasgi.storage import intake

    seen = []
    insert_events, insert_group, insert_profiles = intake.insert_events, intake.insert_group, intake.insert_profiles

    def recording_events(conn, rows, app):
        seen.append(("events", threading.current_thread().name, threading.get_ident()))
        return insert_events(conn, rows, app)

    def recording_group(conn, rows, app, cap):  # the usual group's one statement
        seen.append(("events", threading.current_thread().name, threading.get_ident()))
        return insert_group(conn, rows, app, cap)

    def recording_profiles(conn, rows, cap):
        seen.append(("profiles", threading.current_thread().name, threading.get_ident()))
        return insert_profiles(conn, rows, cap)

    monkeypatch.setattr(intake, "insert_events", recording_events)
    monkeypatch.setattr(intake, "insert_group", recording_group)
    monkeypatch.setattr(intake, "insert_profiles", recording_profiles)
    writer = writers.writer_for(queue_path, 1000, "app-id")  # what the middleware uses
    assert writer.submit(("tid-1", time.time(), '{"request":{}}'))
    assert writer.flush(PATIENCE)
    assert profiles.update_user({"user_id": "u1"}, queue_path=queue_path).result(PATIENCE) == 1
    assert writer.submit(("tid-2", time.time(), '{"request":{}}'))
    assert writer.flush(PATIENCE)
    assert [what for what, _, _ in seen] == ["events", "profiles", "events"]
    assert len({(name, ident) for _, name, ident in seen}) == 1
    assert seen[0][1] == "moesifasgi-queue-writer" and seen[0][2] != threading.get_ident()
    assert [pid for _, pid, _ in queued(queue_path)] == ["u1"]


def test_profiles_sent_before_any_middleware_share_the_writer_the_middleware_then_uses(queue_path):
    assert profiles.update_user({"user_id": "early"}, queue_path=queue_path).result(PATIENCE) == 1
    first = writers.writer_for_queue(queue_path, 1000)
    assert writers.writer_for(queue_path, 1000, "app-id") is first
    assert first.application_id == "app-id"
    assert profiles.update_user({"user_id": "later"}, queue_path=queue_path).result(PATIENCE) == 1
    assert writers.writer_for_queue(queue_path, 1000) is first
    assert [pid for _, pid, _ in queued(queue_path)] == ["early", "later"]


def test_a_profile_written_after_the_queue_file_was_replaced_lands_in_the_new_file(queue_path, tmp_path):
    import os

    assert profiles.update_user({"user_id": "before"}, queue_path=queue_path).result(PATIENCE) == 1
    old = str(tmp_path / "old.sqlite")
    for suffix in ("", "-wal", "-shm"):  # a repair moved the file aside; a fresh one takes its place
        if os.path.exists(queue_path + suffix):
            os.rename(queue_path + suffix, old + suffix)
    storage.connect(queue_path).close()
    assert profiles.update_user({"user_id": "after"}, queue_path=queue_path).result(PATIENCE) == 1
    assert [pid for _, pid, _ in queued(queue_path)] == ["after"]
    assert counts(queue_path)["profiles_pending"] == 1


def test_profiles_beyond_the_writers_memory_bound_are_dropped_and_counted_not_held(queue_path):
    # The writer's byte bound (what waits in memory while the file is unusable)
    # covers profile hand-overs as well as events: a burst bigger than the bound
    # is not held, and its loss is counted durably, by reason.
    from moesifasgi.queue_writer import QueueWriter

    writer = QueueWriter(queue_path, 1000, max_buffered_bytes=4096)
    try:
        big = [("user", f"u-{i}", time.time(), json.dumps({"user_id": f"u-{i}", "metadata": {"x": "y" * 1000}}))
               for i in range(8)]
        assert writer.submit_profiles(big, 1000).result(PATIENCE) == 0
        small = [("user", "ok", time.time(), json.dumps({"user_id": "ok"}))]
        assert writer.submit_profiles(small, 1000).result(PATIENCE) == 1
        assert writer.buffered_bytes == 0
    finally:
        writer.close()
    assert problem_counts(queue_path) == {"profile-drop:buffer-full": 8}
    assert counts(queue_path)["profiles_dropped"] == 8 and [pid for _, pid, _ in queued(queue_path)] == ["ok"]


def test_profiles_lost_to_a_failed_commit_are_counted_durably_with_the_next_write(queue_path, monkeypatch):
    # An I/O error is neither "locked" (kept and retried) nor corruption (moved
    # aside and retried): the hand-over is lost, and the loss must reach the file.
    from moesifasgi.queue_writer import QueueWriter
    from moesifasgi.storage import intake

    real = intake.insert_profiles
    failures = []

    def failing_once(conn, rows, cap):
        if not failures:
            failures.append(len(rows))
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn, rows, cap)

    monkeypatch.setattr(intake, "insert_profiles", failing_once)
    writer = QueueWriter(queue_path, 1000)
    try:
        lost = [("user", f"u-{i}", time.time(), json.dumps({"user_id": f"u-{i}"})) for i in range(3)]
        assert writer.submit_profiles(lost, 1000).result(PATIENCE) == 0
        assert writer.flush(PATIENCE)
        assert wait_until(lambda: counts(queue_path)["profiles_dropped"] == 3)
    finally:
        writer.close()
    assert failures == [3]
    assert problem_counts(queue_path) == {"profile-drop:write-failed": 3}
    assert counts(queue_path)["profiles_pending"] == 0
