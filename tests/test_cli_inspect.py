"""moesif-flush status, check, queues, peek and the options every command shares,
on real queue files (and real processes where a terminal or a signal matters)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from moesifasgi import storage
from moesifasgi._version import __version__
from moesifasgi.queue_location import default_queue_path
from moesifasgi_flush import queue_store as qs
from moesifasgi_flush.cli import cli
from moesifasgi_flush.lease import Lease
from tests._compat import cli_runner
from tests.flush_support import APP_ID, insert_events


@pytest.fixture
def runner(monkeypatch):
    for name in ("MOESIF_QUEUE_PATH", "MOESIF_APPLICATION_ID", "MOESIF_BASE_URI", "MOESIF_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    return cli_runner()


def invoke(runner, *args, **kwargs):
    return runner.invoke(cli, list(args), catch_exceptions=False, **kwargs)


def _one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1 and "Traceback" not in text


def test_version_prints_the_package_version(runner):
    result = invoke(runner, "--version")
    assert result.exit_code == 0 and result.output.strip() == f"moesif-flush (moesifasgi) {__version__}"


def test_shared_options_work_before_and_after_the_command_and_are_in_its_help(runner, path):
    insert_events(path, 2)
    before = json.loads(invoke(runner, "--queue", path, "status", "--json").output)
    after = json.loads(invoke(runner, "status", "--json", "--queue", path).output)
    assert before["pending"] == after["pending"] == 2
    assert json.loads(invoke(runner, "dead-letters", "list", "--json", "--queue", path).output) == []
    for args in (("status",), ("check",), ("drain",), ("run",), ("dead-letters", "show")):
        text = invoke(runner, *args, "--help").output
        assert "--queue" in text and "--application-id" in text and "--log-format" in text, args


def test_an_option_after_the_command_overrides_the_environment(runner, path, tmp_path, monkeypatch):
    monkeypatch.setenv("MOESIF_QUEUE_PATH", str(tmp_path / "elsewhere.sqlite"))
    insert_events(path, 1)
    assert json.loads(invoke(runner, "status", "--json", "--queue", path).output)["pending"] == 1


def test_status_text_is_for_people_and_json_has_every_field(runner, path):
    insert_events(path, 3, created_at=time.time() - 190)
    conn = storage.connect(path)
    Lease("box:4242:ab", duration=30).try_acquire(conn)
    conn.execute("UPDATE counters SET value = 1234567 WHERE name = 'sent'")
    conn.close()
    text = invoke(runner, "status", "--queue", path).output
    assert "oldest 3 min 1" in text  # 190 s, read a moment later
    assert "1,234,567 events" in text and " KB, schema " in text
    assert "pid 4242 on box, for " in text and "valid " in text
    assert "{" not in text  # no Python dicts: the profile counts are a sentence too
    assert "profiles:" in text and "0 pending, 0 sent, 0 dropped, 0 dead letters" in text
    info = json.loads(invoke(runner, "status", "--json", "--queue", path).output)
    assert info["sent"] == 1234567 and info["leader"]["expires_at"] > time.time()
    assert info["profiles"]["profiles_pending"] == 0 and 189 < info["oldest_pending_age_s"] < 300


def test_status_openmetrics_prints_the_queue_metrics(runner, path):
    insert_events(path, 4, created_at=time.time() - 30)
    conn = storage.connect(path)
    conn.execute("UPDATE counters SET value = 7 WHERE name = 'dropped'")
    rows = qs.claim(conn, "me", 1, 60)
    qs.dead_letter(conn, "me", [r.id for r in rows], 400, "HTTP 400")
    conn.close()
    text = invoke(runner, "status", "--format", "openmetrics", "--queue", path).output
    assert text.endswith("# EOF\n")
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(lines["moesifasgi_events_pending"]) == 3
    assert float(lines["moesifasgi_events_dropped_total"]) == 7
    assert float(lines["moesifasgi_events_dead_lettered_total"]) == 1
    assert 29 <= float(lines["moesifasgi_oldest_pending_age_seconds"]) < 120
    assert float(lines["moesifasgi_queue_file_bytes"]) > 0 and float(lines["moesifasgi_queue_up"]) == 1
    for name in ("moesifasgi_events_sent_total", "moesifasgi_profiles_pending", "moesifasgi_profiles_sent_total",
                 "moesifasgi_lease_held"):
        assert name in lines, name
    classic = invoke(runner, "status", "--format", "prometheus", "--queue", path).output
    assert "# EOF" not in classic and "moesifasgi_events_pending 3.0" in classic


def test_status_watch_prints_rates_once_per_interval(runner, path):
    insert_events(path, 5)
    result = invoke(runner, "status", "--watch", "0.05", "--count", "3", "--queue", path)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 0 and len(lines) == 3
    assert "pending 5" in lines[0] and "sent/s" not in lines[0]
    assert "0.0 sent/s, backlog +0.0/s" in lines[2]


def test_status_watch_stops_with_exit_zero_on_ctrl_c(path):
    proc = subprocess.Popen([sys.executable, "-m", "moesifasgi_flush.cli", "status", "--watch", "0.1",
                             "--queue", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "pending 0" in line
        proc.send_signal(2)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err


def test_check_is_healthy_on_a_fresh_queue(runner, path):
    result = invoke(runner, "check", "--queue", path)
    assert result.exit_code == 0 and result.output.startswith("ok: 0 pending")


def test_check_names_an_old_backlog_with_the_last_error(runner, path):
    insert_events(path, 2, created_at=time.time() - 400)
    conn = storage.connect(path)
    qs.kv_set(conn, qs.KV_LAST_ERROR, json.dumps({"at": time.time(), "outcome": "retry", "status": None,
                                                  "error": "connection refused"}))
    conn.close()
    result = invoke(runner, "check", "--queue", path)
    assert result.exit_code == 1 and _one_line(result.output)
    assert "oldest pending event is 6 min" in result.output and "connection refused" in result.output
    assert invoke(runner, "check", "--max-age", "600", "--queue", path).exit_code == 0
    assert invoke(runner, "check", "--max-age", "0", "--queue", path).exit_code == 0  # 0: not checked


def test_check_requires_a_leader_only_when_asked(runner, path):
    assert invoke(runner, "check", "--queue", path).exit_code == 0
    result = invoke(runner, "check", "--require-leader", "--queue", path)
    assert result.exit_code == 1 and "no process holds the flusher lease" in result.output
    conn = storage.connect(path)
    Lease(duration=30).try_acquire(conn)
    conn.close()
    assert invoke(runner, "check", "--require-leader", "--queue", path).exit_code == 0


def test_check_reports_recent_dead_letters(runner, path):
    insert_events(path, 1)
    conn = storage.connect(path)
    rows = qs.claim(conn, "me", 1, 60)
    qs.dead_letter(conn, "me", [r.id for r in rows], 400, "HTTP 400: bad field")
    conn.close()
    result = invoke(runner, "check", "--queue", path)
    assert result.exit_code == 1 and "1 events dead-lettered" in result.output and "bad field" in result.output
    assert invoke(runner, "check", "--dead-letter-window", "0", "--queue", path).exit_code == 0


@pytest.mark.parametrize("content", [None, b"junk" * 100])
def test_check_reports_a_missing_or_unusable_file(runner, tmp_path, content):
    target = tmp_path / "q.sqlite"
    if content is not None:
        target.write_bytes(content)
    result = invoke(runner, "check", "--queue", str(target))
    assert result.exit_code == 1 and _one_line(result.output) and "queue file unusable" in result.output
    assert (content is None) == (not target.exists())


def test_queues_lists_default_files_and_marks_this_apps(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    mine = default_queue_path(APP_ID)
    other = default_queue_path("another-app")
    storage.connect(mine).close()
    insert_events(mine, 3)
    storage.connect(other).close()
    (tmp_path / "state" / "moesifasgi" / "notes.sqlite").write_bytes(b"junk" * 10)
    result = invoke(runner, "queues", "--application-id", APP_ID)
    assert result.exit_code == 0
    line = next(l for l in result.output.splitlines() if mine in l)
    assert line.startswith("* ") and "3 pending" in line
    assert any(l.startswith("  ") and other in l for l in result.output.splitlines())
    assert "notes.sqlite" in result.output and "unusable" in result.output
    rows = json.loads(invoke(runner, "queues", "--json", "--application-id", APP_ID).output)
    assert {r["path"]: r["this_app"] for r in rows if "error" not in r} == {mine: True, other: False}


def test_queues_says_where_it_looked_when_there_is_nothing(runner, tmp_path):
    result = invoke(runner, "queues", "--dir", str(tmp_path))
    assert result.exit_code == 0 and f"no queue files in {tmp_path}" in result.output


def test_a_missing_default_queue_says_how_the_path_was_derived(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    result = invoke(runner, "status", "--application-id", APP_ID)
    assert result.exit_code == 1 and _one_line(result.output)
    assert "working directory" in result.output and "moesif-flush queues" in result.output
    assert "migrate" not in result.output  # the old hint created a second, empty queue


def test_log_format_json_prints_one_object_per_line(runner, path, collector):
    insert_events(path, 3)
    result = runner.invoke(cli, ["drain", "--queue", path, "--application-id", APP_ID, "--base-uri", collector.url,
                                 "--log-format", "json", "--log-level", "DEBUG"], catch_exceptions=False)
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_shell_completion_is_generated_by_the_console_script(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "moesif-flush")
    out = subprocess.run([exe], env=dict(os.environ, _MOESIF_FLUSH_COMPLETE="bash_source"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "complete" in out.stdout and "moesif-flush" in out.stdout


@pytest.mark.parametrize("args, message", [
    (("migrate", "--queue", "/proc/nope/q.sqlite"), "No such file or directory"),
    (("status", "--queue", "/"), "is a directory"),
    (("peek", "-n", "0", "--queue", "x"), "Invalid value"),
    (("dead-letters", "show", "abc", "--queue", "x"), "Invalid value"),
    (("status", "--watch", "0", "--queue", "x"), "must be more than 0"),
    (("nope",), "No such command"),
    (("--bogus", "status"), "No such option"),
    (("status", "--bogus"), "No such option"),
    (("dead-letters", "nope"), "No such command"),
    (("dead-letters", "requeue", "x", "--queue", "x"), "Invalid value"),
    (("run", "--metrics-port", "70000"), "Invalid value"),
    (("drain", "--give-up-after", "-1"), "Invalid value"),
    (("check", "--max-age", "soon", "--queue", "x"), "Invalid value"),
    (("queues", "--json", "extra"), "unexpected extra argument"),
    (("status", "--format", "xml", "--queue", "x"), "Invalid value"),
    (("--log-format", "yaml", "status"), "Invalid value"),
])
def test_misuse_is_one_line_and_a_non_zero_exit_never_a_traceback(args, message, tmp_path):
    out = subprocess.run([sys.executable, "-m", "moesifasgi_flush.cli", *args], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={k: v for k, v in os.environ.items()
                                                        if not k.startswith("MOESIF_QUEUE")})
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("Error: "), out.stderr


def test_migrate_under_a_file_is_one_line(runner, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke(runner, "migrate", "--queue", str(blocker / "q.sqlite"))
    assert result.exit_code == 1 and _one_line(result.output) and "File exists" in result.output


def test_read_only_commands_leave_an_old_schema_alone(runner, path):
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {storage.latest_version() - 1}")
    conn.close()
    result = invoke(runner, "status", "--json", "--queue", path)
    assert result.exit_code == 0 and json.loads(result.output)["schema_version"] == storage.latest_version() - 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == storage.latest_version() - 1
    conn.close()


def test_a_leader_whose_process_is_gone_is_marked_at_once(runner, path):
    import socket
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    conn = storage.connect(path)
    Lease(f"{socket.gethostname()}:{gone.pid}:ab", duration=30).try_acquire(conn)
    conn.close()
    text = invoke(runner, "status", "--queue", path).output
    assert f"pid {gone.pid} on {socket.gethostname()}" in text and "NOT RUNNING here" in text
    info = json.loads(invoke(runner, "status", "--json", "--queue", path).output)
    assert info["leader"]["running_here"] is False
    conn = storage.connect(path)
    Lease(duration=30).try_acquire(conn)  # expired? no: still held by the dead one for 30 s
    conn.execute("DELETE FROM leases")
    Lease(duration=30).try_acquire(conn)  # this test process: running
    conn.close()
    assert json.loads(invoke(runner, "status", "--json", "--queue", path).output)["leader"]["running_here"] is True


def test_status_and_queues_name_the_apps_that_wrote_to_the_file(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    mine = default_queue_path(APP_ID)
    conn = storage.connect(mine)
    conn.execute("INSERT INTO apps (application_id) VALUES (?), (?)", (APP_ID, "second-app"))
    conn.close()
    text = invoke(runner, "status", "--queue", mine).output
    assert "application id: second-app, test-app-id" in text
    assert "app second-app, test-app-id" in invoke(runner, "queues").output


def test_the_cli_loads_the_flusher_only_for_the_commands_that_post():
    script = ("import sys\n"
              "from click.testing import CliRunner\n"
              "from moesifasgi_flush.cli import cli\n"
              "assert CliRunner().invoke(cli, ['--version']).exit_code == 0\n"
              "assert CliRunner().invoke(cli, ['check', '--help']).exit_code == 0\n"
              "print('httpx' in sys.modules, 'moesifasgi.delivery.flusher' in sys.modules)\n"
              "import moesifasgi_flush.flusher as old, moesifasgi.delivery.flusher as new\n"
              "from moesifasgi_flush import queue_store\n"
              "print(old is new, queue_store.__name__)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True", "moesifasgi.storage.queue_store"]
