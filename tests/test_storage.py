from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat

import pytest

from moesifasgi import storage


def test_a_new_queue_file_is_created_private_with_wal_and_the_latest_schema(tmp_path):
    path = str(tmp_path / "sub" / "queue.sqlite")
    conn = storage.connect(path)
    conn.execute("INSERT INTO events (transaction_id, created_at, body) VALUES ('t', 1, '{}')")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert storage.schema_version(conn) == storage.latest_version()
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(os.stat(path + suffix).st_mode)
        assert mode == 0o600, (suffix, oct(mode))
    assert stat.S_IMODE(os.stat(tmp_path / "sub").st_mode) == 0o700


def test_the_pending_counter_follows_inserts_and_deletes(tmp_path):
    conn = storage.connect(str(tmp_path / "q.sqlite"))
    conn.executemany(
        "INSERT INTO events (transaction_id, created_at, body) VALUES (?, 1, '{}')", [(str(i),) for i in range(5)]
    )
    conn.execute("DELETE FROM events WHERE transaction_id IN ('0', '1')")
    assert conn.execute("SELECT value FROM counters WHERE name='pending'").fetchone()[0] == 3


def test_a_schema_newer_than_the_code_is_a_clear_error(tmp_path):
    path = str(tmp_path / "q.sqlite")
    storage.connect(path).execute(f"PRAGMA user_version = {storage.latest_version() + 1}")
    with pytest.raises(storage.SchemaTooNewError, match="newer than this moesifasgi knows"):
        storage.connect(path)


def test_a_missing_file_is_an_error_when_creation_is_not_wanted(tmp_path):
    with pytest.raises(storage.QueueError, match="no queue file"):
        storage.connect(str(tmp_path / "nope.sqlite"), create=False)
    assert not (tmp_path / "nope.sqlite").exists()


def test_a_corrupt_file_is_reported_as_a_queue_error(tmp_path):
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(storage.QueueError, match="cannot"):
        storage.connect(str(path))


def test_corruption_is_told_apart_from_other_database_errors(tmp_path):
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(storage.QueueError) as caught:
        storage.connect(str(path))
    assert storage.is_corruption(caught.value)
    assert not storage.is_corruption(sqlite3.OperationalError("database is locked"))
    assert not storage.is_corruption(OSError("disk full"))


def test_quarantine_moves_only_the_file_that_was_found_corrupt(tmp_path):
    path = str(tmp_path / "q.sqlite")
    with open(path, "wb") as f:
        f.write(b"garbage" * 100)
    corrupt = storage.file_identity(path)
    os.rename(path, path + ".gone")  # another worker replaced it meanwhile...
    storage.connect(path).close()  # ...with a fresh queue
    assert storage.quarantine(path, corrupt) is None
    assert storage.file_identity(path) is not None and not list(tmp_path.glob("*.corrupt-*"))
    moved = storage.quarantine(path + ".gone", corrupt)
    assert moved is not None and os.path.exists(moved) and not os.path.exists(path + ".gone")


def test_migration_statements_keep_trigger_bodies_whole():
    sql = storage.migrations()[0][2]
    statements = list(storage._statements(sql))
    triggers = [s for s in statements if s.upper().startswith("CREATE TRIGGER")]
    assert len(triggers) == 2
    assert all(t.rstrip().upper().endswith("END;") for t in triggers)


def _open_with_an_extra_migration(path: str, barrier) -> None:
    shipped = storage.migrations()
    extra = (
        shipped[-1][0] + 1,
        "9999_probe.sql",
        # Deliberately not idempotent: running it twice would fail or add a row.
        f"CREATE TABLE applied (pid INTEGER);\nINSERT INTO applied VALUES ({os.getpid()});\n",
    )
    storage.migrations = lambda: shipped + [extra]
    barrier.wait()
    conn = storage.connect(path)
    conn.execute("INSERT INTO events (transaction_id, created_at, body) VALUES (?, 1, '{}')", (str(os.getpid()),))
    conn.close()


def test_processes_racing_to_create_the_queue_migrate_it_exactly_once(tmp_path):
    path = str(tmp_path / "race.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_with_an_extra_migration, args=(path, barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == storage.latest_version() + 1
    assert conn.execute("SELECT COUNT(*) FROM applied").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 6
    assert conn.execute("SELECT value FROM counters WHERE name='pending'").fetchone()[0] == 6


def _snapshot(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_read_only_open_reads_the_queue_and_refuses_every_write(tmp_path):
    path = str(tmp_path / "q.sqlite")
    conn = storage.connect(path)
    conn.execute("INSERT INTO events (transaction_id, created_at, body) VALUES ('t', 1, '{}')")
    conn.close()
    before = _snapshot(path)
    ro = storage.connect_readonly(path)
    assert ro.execute("SELECT value FROM counters WHERE name = 'pending'").fetchone()[0] == 1
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("DELETE FROM events")
    ro.close()
    assert _snapshot(path) == before


def test_a_read_only_open_leaves_another_sqlite_file_exactly_as_it_was(tmp_path):
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = _snapshot(other)
    with pytest.raises(storage.QueueError, match="is not a moesifasgi queue"):
        storage.connect_readonly(str(other))
    assert _snapshot(other) == before
    conn = sqlite3.connect(other)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["users"]
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


@pytest.mark.parametrize("content", [b"", b"this is not a database at all" * 200])
def test_a_read_only_open_refuses_a_file_that_is_not_a_queue_in_one_line(tmp_path, content):
    path = tmp_path / "x.sqlite"
    path.write_bytes(content)
    with pytest.raises(storage.QueueError) as caught:
        storage.connect_readonly(str(path))
    assert "is not a moesifasgi queue" in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == content


def test_a_read_only_open_never_creates_or_migrates(tmp_path):
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(storage.QueueError, match="no queue file"):
        storage.connect_readonly(str(missing))
    assert not missing.exists()
    path = str(tmp_path / "q.sqlite")
    storage.connect(path).execute(f"PRAGMA user_version = {storage.latest_version() + 1}")
    with pytest.raises(storage.SchemaTooNewError):
        storage.connect_readonly(path)
    storage.connect(path, migrate=False).execute(f"PRAGMA user_version = {storage.latest_version() - 1}")
    storage.connect_readonly(path).close()  # an older queue is read as it is, never migrated
    assert storage.schema_version(storage.connect(path, migrate=False)) == storage.latest_version() - 1


def test_no_module_outside_the_storage_package_speaks_sql_to_the_queue():
    # One owner of the file: every statement lives in moesifasgi/storage/, so that
    # the rules on replaced, corrupt and full files are applied in one place.
    import ast
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    storage_dir = root / "moesifasgi" / "storage"
    sql = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|PRAGMA|BEGIN|COMMIT|ROLLBACK|CREATE|VACUUM)\b")
    found = []
    for package in ("moesifasgi", "moesifasgi_flush"):
        for source in sorted((root / package).rglob("*.py")):
            if storage_dir in source.parents:
                continue
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("execute", "executemany", "executescript")):
                    found.append(f"{source.relative_to(root)}:{node.lineno} calls .{node.func.attr}()")
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and sql.match(node.value):
                    found.append(f"{source.relative_to(root)}:{node.lineno} holds SQL {node.value[:40]!r}")
    assert found == []
