"""moesif-flush dead-letters: list (paging, reason filter), show, requeue and purge
on a real queue file, with unknown ids reported and a non-zero exit."""
from __future__ import annotations

import json

import pytest

from moesifasgi import storage
from moesifasgi_flush import queue_store as qs
from moesifasgi_flush.cli import cli
from tests._compat import cli_runner
from tests.flush_support import insert_events, query


@pytest.fixture
def runner(monkeypatch):
    for name in ("MOESIF_QUEUE_PATH", "MOESIF_APPLICATION_ID", "MOESIF_BASE_URI"):
        monkeypatch.delenv(name, raising=False)
    return cli_runner()


@pytest.fixture
def letters(path):
    """Five dead letters: three refused with HTTP 400, two with 413."""
    tids = insert_events(path, 5, per_event_rows=True)  # one row each: dead-lettered in two sets
    conn = storage.connect(path)
    rows = qs.claim(conn, "me", 5, 60)
    qs.dead_letter(conn, "me", [r.id for r in rows[:3]], 400, "HTTP 400: missing request.time")
    qs.dead_letter(conn, "me", [r.id for r in rows[3:]], 413, "HTTP 413: too large")
    conn.close()
    ids = [i for (i,) in query(path, "SELECT id FROM dead_letters ORDER BY id")]
    return tids, ids


def run(runner, *args, **kwargs):
    return runner.invoke(cli, list(args), catch_exceptions=False, **kwargs)


def test_list_pages_through_the_dead_letters(runner, path, letters):
    tids, ids = letters
    first = json.loads(run(runner, "dead-letters", "list", "-n", "2", "--json", "--queue", path).output)
    second = json.loads(run(runner, "dead-letters", "list", "-n", "2", "--offset", "2", "--json",
                            "--queue", path).output)
    assert [d["id"] for d in first + second] == ids[:4]
    text = run(runner, "dead-letters", "list", "--limit", "2", "--queue", path)
    assert "--offset 2" in text.stderr and tids[0] in text.stdout


def test_list_filters_by_reason_or_status(runner, path, letters):
    tids, _ = letters
    found = json.loads(run(runner, "dead-letters", "list", "--reason", "TOO LARGE", "--json", "--queue", path).output)
    assert [d["transaction_id"] for d in found] == tids[3:]
    assert len(json.loads(run(runner, "dead-letters", "list", "--reason", "400", "--json",
                              "--queue", path).output)) == 3
    assert "no dead letters match" in run(runner, "dead-letters", "list", "--reason", "nope", "--queue", path).output


def test_show_prints_the_stored_event(runner, path, letters):
    tids, ids = letters
    result = run(runner, "dead-letters", "show", str(ids[0]), "--queue", path)
    shown = json.loads(result.stdout)
    assert shown["body"]["transaction_id"] == tids[0] and shown["status"] == 400
    assert "missing request.time" in result.stderr


def test_show_of_an_unknown_id_is_an_error(runner, path, letters):
    result = run(runner, "dead-letters", "show", "999", "--queue", path)
    assert result.exit_code == 1 and "no dead letter with id 999" in result.output


def test_requeue_of_an_unknown_id_warns_and_exits_non_zero(runner, path, letters):
    _, ids = letters
    result = run(runner, "dead-letters", "requeue", "999", "--queue", path)
    assert result.exit_code == 1 and "requeued 0 events" in result.stdout and "no dead letter with id 999" in result.stderr
    mixed = run(runner, "dead-letters", "requeue", str(ids[0]), "998", "--queue", path)
    assert mixed.exit_code == 1 and "requeued 1 events" in mixed.stdout and "998" in mixed.stderr
    assert query(path, "SELECT COUNT(*) FROM events") == [(1,)]


def test_purge_refuses_without_yes_when_no_terminal_can_ask(runner, path, letters):
    result = run(runner, "dead-letters", "purge", "--queue", path)
    assert result.exit_code == 1 and "--yes" in result.output
    assert query(path, "SELECT COUNT(*) FROM dead_letters") == [(5,)]
    _, ids = letters
    result = run(runner, "dead-letters", "purge", "--yes", str(ids[0]), "997", "--queue", path)
    assert result.exit_code == 1 and "purged 1 dead letters" in result.stdout and "997" in result.stderr
    assert run(runner, "dead-letters", "purge", "--yes", "--queue", path).stdout == "purged 4 dead letters\n"
