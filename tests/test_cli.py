from __future__ import annotations

import json
import signal
import threading
import time

import click
import pytest

from moesifasgi import storage
from moesifasgi_flush import queue_store as qs
from moesifasgi_flush.cli import cli
from moesifasgi_flush.lease import Lease
from tests._compat import cli_runner
from tests.flush_support import APP_ID, cli_process, insert_events, query, wait_until

STATUS_KEYS = {"pending", "in_flight", "dead_letters", "dropped", "oldest_pending_age_s", "leader",
               "last_success_at", "last_error", "queue_file_bytes", "schema_version"}


@pytest.fixture
def runner(monkeypatch):
    for name in ("MOESIF_QUEUE_PATH", "MOESIF_APPLICATION_ID", "MOESIF_BASE_URI"):
        monkeypatch.delenv(name, raising=False)
    return cli_runner()


def invoke(runner, *args, **kwargs):
    return runner.invoke(cli, list(args), catch_exceptions=False, **kwargs)


def _commands(group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


def test_every_command_has_help_with_an_example(runner):
    names = []
    for names_path, command in _commands(cli):
        result = invoke(runner, *names_path, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output and "moesif-flush" in result.output, names_path
        names.append(" ".join(names_path))
    assert {"run", "drain", "status", "peek", "migrate", "check", "queues", "dead-letters list",
            "dead-letters show", "dead-letters requeue", "dead-letters purge"} <= set(names)


@pytest.mark.parametrize("args", [("status",), ("peek",), ("dead-letters", "list"), ("drain",)])
def test_a_missing_queue_file_is_a_one_line_error_and_is_not_created(runner, tmp_path, args):
    missing = tmp_path / "nope.sqlite"
    result = invoke(runner, "--queue", str(missing), "--application-id", APP_ID, *args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "no queue file" in result.output and "Traceback" not in result.output
    assert not missing.exists()


def test_a_wrong_path_and_a_missing_application_id_are_one_line_errors(runner, tmp_path, path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not sqlite " * 500)
    for args, message in [(("--queue", str(tmp_path), "status"), "is a directory"),
                          (("--queue", str(garbage), "status"), "is not a moesifasgi queue"),
                          (("status",), "no queue file given"),
                          (("--queue", path, "drain"), "application id"),
                          (("--queue", path, "run"), "application id")]:
        result = invoke(runner, *args)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1


def test_the_queue_path_defaults_from_the_application_id(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    result = invoke(runner, "--application-id", APP_ID, "migrate")
    assert result.exit_code == 0 and str(tmp_path / "state") in result.output


def test_migrate_creates_the_file_and_prints_the_schema_version(runner, tmp_path):
    target = tmp_path / "new" / "q.sqlite"
    result = invoke(runner, "--queue", str(target), "migrate")
    assert result.exit_code == 0 and target.exists()
    assert result.output.startswith(f"schema version {storage.latest_version()} ")


def test_status_json_reports_counts_the_leader_and_the_last_outcomes(runner, path, monkeypatch):
    insert_events(path, 3, created_at=time.time() - 60)
    conn = storage.connect(path)
    qs.claim(conn, "someone", 1, 60)
    Lease("box:4242:ab", duration=30).try_acquire(conn)
    qs.kv_set(conn, qs.KV_LAST_ERROR, json.dumps({"at": 1.0, "outcome": "retry", "status": 503, "error": "HTTP 503"}))
    conn.close()
    monkeypatch.setenv("MOESIF_QUEUE_PATH", path)
    info = json.loads(invoke(runner, "status", "--json").output)
    assert STATUS_KEYS <= set(info)
    assert (info["pending"], info["in_flight"], info["dead_letters"], info["dropped"]) == (3, 1, 0, 0)
    assert 59 <= info["oldest_pending_age_s"] < 120
    assert (info["leader"]["pid"], info["leader"]["host"]) == (4242, "box")
    assert info["last_error"]["status"] == 503 and info["last_success_at"] is None
    assert info["queue_file_bytes"] > 0 and info["schema_version"] == storage.latest_version()
    text = invoke(runner, "status").output
    assert "pending:" in text and "pid 4242 on box" in text and "3 events (1 in flight), oldest 1 min" in text


def test_peek_prints_the_next_events_as_pretty_json(runner, path):
    tids = insert_events(path, 5)
    result = invoke(runner, "--queue", path, "peek", "-n", "2")
    peeked = json.loads(result.output)
    assert [p["transaction_id"] for p in peeked] == tids[:2]
    assert peeked[0]["event"]["transaction_id"] == tids[0] and "\n  " in result.output


def test_dead_letters_can_be_listed_requeued_and_purged(runner, path):
    tids = insert_events(path, 3)
    conn = storage.connect(path)
    rows = qs.claim(conn, "me", 3, 60)
    qs.dead_letter(conn, "me", [r.id for r in rows], 400, "HTTP 400: bad")
    conn.close()
    listed = invoke(runner, "--queue", path, "dead-letters", "list")
    assert tids[0] in listed.output and "status=400" in listed.output
    ids = [d["id"] for d in json.loads(invoke(runner, "--queue", path, "dead-letters", "list", "--json").output)]
    assert invoke(runner, "--queue", path, "dead-letters", "requeue", str(ids[0])).output == "requeued 1 events\n"
    refused = invoke(runner, "--queue", path, "dead-letters", "purge", input="n\n")
    assert refused.exit_code == 1 and query(path, "SELECT COUNT(*) FROM dead_letters") == [(2,)]
    assert "purged 2" in invoke(runner, "--queue", path, "dead-letters", "purge", "--yes").output
    assert query(path, "SELECT transaction_id FROM events") == [(tids[0],)]


def test_drain_prints_sent_failed_and_left_and_exits_zero_when_empty(runner, path, collector):
    insert_events(path, 60)
    result = invoke(runner, "--queue", path, "--application-id", APP_ID, "--base-uri", collector.url, "drain")
    assert result.exit_code == 0
    assert result.output.startswith("sent 60 events, 0 dead-lettered, 0 not sent after errors, 0 left in the queue")
    assert collector.event_count == 60


def test_drain_exits_non_zero_when_events_remain_because_of_errors(runner, path, collector):
    insert_events(path, 10)
    collector.fail_for(401, 30)
    result = invoke(runner, "--queue", path, "--application-id", APP_ID, "--base-uri", collector.url, "drain")
    assert result.exit_code == 1
    assert "sent 0 events, 0 dead-lettered, 10 not sent after errors, 10 left" in result.output
    assert "application id" in result.output
    collector.fail_for(503, 30)
    result = invoke(runner, "--queue", path, "--application-id", APP_ID, "--base-uri", collector.url,
                    "drain", "--max-seconds", "0.5")
    assert result.exit_code == 1 and "10 left" in result.output


def test_run_drains_logs_its_stats_and_exits_zero_on_sigterm(path, collector):
    tids = insert_events(path, 50)
    proc = cli_process("run", "--stats-interval", "0.3", queue=path, base_uri=collector.url)
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: collector.distinct_transaction_ids() == set(tids))
        assert wait_until(lambda: query(path, "SELECT COUNT(*) FROM leases") == [(1,)])
        assert wait_until(lambda: any("sent 50 events in the last" in line for line in lines))
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(60)
        reader.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert proc.returncode == 0 and time.monotonic() - started < 10
    assert "sent 50 events in the last" in err and "backlog 0" in err
    assert query(path, "SELECT COUNT(*) FROM leases") == [(0,)]
    assert "Traceback" not in err


def test_status_shows_the_recording_problems_counted_by_the_middleware_per_reason(runner, queue_path, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from moesifasgi import MoesifMiddleware, writers

    app = FastAPI()

    @app.get("/ok")
    def ok():
        return {"ok": True}

    app.add_middleware(MoesifMiddleware, settings={
        "APPLICATION_ID": APP_ID, "QUEUE_PATH": queue_path,
        "IDENTIFY_USER": lambda request, response: request.state.user.id,
        "MASK_EVENT_MODEL": lambda event: None})
    client = TestClient(app)
    for _ in range(3):
        client.get("/ok")
    writers.flush_all()
    monkeypatch.setenv("MOESIF_QUEUE_PATH", queue_path)
    info = json.loads(invoke(runner, "status", "--json").output)
    assert info["pending"] == 3 and info["dropped"] == 0
    assert info["problems"] == {"callback-raised:IDENTIFY_USER": 3, "mask-failed": 3}
    text = invoke(runner, "status").output
    assert "callback-raised:IDENTIFY_USER=3" in text


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("peek",), ("dead-letters", "list")])
def test_read_only_commands_refuse_another_sqlite_file_without_touching_it(runner, tmp_path, args):
    import sqlite3
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    result = invoke(runner, "--queue", str(other), *args)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "is not a moesifasgi queue" in result.output
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
