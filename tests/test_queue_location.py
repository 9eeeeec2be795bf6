"""The queue's location and files: private to this uid, whatever other users or the umask do.

The tests that need a second uid run a real child process as another user
(`subprocess.run(user=...)`); they need root and are skipped without it.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from typing import Callable, Iterator

import pytest

from moesifasgi import queue_location, storage
from moesifasgi.queue_location import UnsafeQueueLocation, default_queue_path, resolve_queue_path
from moesifasgi.queue_writer import QueueWriter

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to act as a second uid")
OTHER_UID = 65534  # nobody
THIRD_UID = 65533


def _modes(directory: str) -> dict:
    return {name: stat.S_IMODE(os.lstat(os.path.join(directory, name)).st_mode) for name in os.listdir(directory)}


@pytest.fixture
def shared_tmp() -> Iterator[str]:
    """A world-writable sticky directory like /tmp, that other uids can reach."""
    directory = tempfile.mkdtemp(prefix="moesifasgi-test-shared-", dir="/tmp")
    os.chmod(directory, 0o1777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def no_home(monkeypatch, shared_tmp):
    """The `nobody` situation: no usable state directory, so the temp directory is next."""
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", "/proc/no-such-home")  # cannot be created
    monkeypatch.setattr(tempfile, "tempdir", shared_tmp)
    return shared_tmp


def run_as(uid: int, function: Callable[[], object]) -> str:
    """Run `function` in a forked child that has become `uid` (a second local user).

    Forked rather than exec'd: the test interpreter may sit where other users
    cannot execute it. Returns what the function returned, or "ERROR <exception>".
    """
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 0
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                outcome = str(function())
            except Exception as exc:
                outcome = f"ERROR {type(exc).__name__}: {exc}"
            os.write(writer, outcome.encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(writer)
    chunks = []
    while True:
        chunk = os.read(reader, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(reader)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child could not become the other user"
    return b"".join(chunks).decode()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_every_file_of_the_queue_is_0600_whatever_the_umask(tmp_path, umask):
    directory = tmp_path / "q"
    path = str(directory / "queue.sqlite")
    old = os.umask(umask)
    try:
        conn = storage.connect(path)
        conn.execute("INSERT INTO events (transaction_id, created_at, body) VALUES ('t', 1, '{}')")
        os.close(queue_location.open_private_file(path + ".helper-lock"))
        moved = storage.quarantine(path, storage.file_identity(path))  # also takes <queue>.lock
        conn.close()
        storage.connect(path).close()  # a new queue beside the moved-aside one
    finally:
        os.umask(old)
    modes = _modes(str(directory))
    assert moved is not None and os.path.basename(moved) in modes
    assert {"queue.sqlite", "queue.sqlite.lock", "queue.sqlite.helper-lock"} <= set(modes)
    assert any(name.endswith("-wal") for name in modes)
    assert all(mode == 0o600 for mode in modes.values()), {k: oct(v) for k, v in modes.items()}
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_files_left_open_to_others_by_an_older_version_are_made_private(tmp_path):
    path = str(tmp_path / "queue.sqlite")
    storage.connect(path).execute("INSERT INTO events (transaction_id, created_at, body) VALUES ('t', 1, '{}')")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.chmod(path + suffix, 0o644)
    storage.connect(path).close()
    assert all(mode == 0o600 for mode in _modes(str(tmp_path)).values())


def test_a_symlink_at_the_queue_name_is_refused_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere.sqlite"
    elsewhere.write_bytes(b"")
    os.symlink(elsewhere, tmp_path / "queue.sqlite")
    with pytest.raises(storage.QueueError, match="symlink"):
        storage.connect(str(tmp_path / "queue.sqlite"))
    assert elsewhere.read_bytes() == b""


def test_a_symlinked_wal_is_refused_so_sqlite_never_writes_through_it(tmp_path):
    path = str(tmp_path / "queue.sqlite")
    storage.connect(path).close()
    target = tmp_path / "stolen"
    os.symlink(target, path + "-wal")
    with pytest.raises(storage.QueueError, match="symlink"):
        storage.connect(path)
    assert not target.exists()


def test_an_explicit_queue_directory_that_other_users_can_write_is_a_clear_error(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(storage.QueueError, match="QUEUE_PATH.*only this user can write"):
        storage.connect(str(shared / "queue.sqlite"))
    assert os.listdir(shared) == []


def test_the_default_location_falls_back_to_a_private_temp_directory_it_creates(no_home):
    path = default_queue_path("app")
    directory = os.path.dirname(path)
    assert directory == os.path.join(no_home, f"moesifasgi-{os.getuid()}")
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_an_own_fallback_directory_that_others_could_read_is_closed_to_them(no_home):
    directory = os.path.join(no_home, f"moesifasgi-{os.getuid()}")
    os.mkdir(directory)
    os.chmod(directory, 0o755)
    assert os.path.dirname(default_queue_path("app")) == directory
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_a_symlink_planted_at_the_fallback_directory_is_refused_with_an_error_naming_the_setting(no_home, tmp_path):
    os.symlink(tmp_path, os.path.join(no_home, f"moesifasgi-{os.getuid()}"))
    with pytest.raises(UnsafeQueueLocation, match="symlink.*QUEUE_PATH"):
        default_queue_path("app")
    assert os.listdir(tmp_path) == []


def test_without_a_home_no_directory_named_tilde_is_ever_created(monkeypatch, tmp_path, no_home):
    import pwd

    monkeypatch.delenv("HOME")
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    monkeypatch.chdir(tmp_path)
    assert os.path.dirname(default_queue_path("app")).startswith(no_home)
    with pytest.raises(UnsafeQueueLocation, match="QUEUE_PATH"):
        resolve_queue_path("~/queue.sqlite", "app")
    assert not os.path.exists(tmp_path / "~")


def test_an_explicit_path_under_home_still_expands_from_the_passwd_entry(monkeypatch):
    import pwd

    monkeypatch.delenv("HOME")
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert resolve_queue_path("~/q.sqlite", "app") == os.path.join(home, "q.sqlite")


@needs_root
def test_a_fallback_directory_another_user_created_first_is_refused(no_home):
    squatted = os.path.join(no_home, f"moesifasgi-{os.getuid()}")
    assert run_as(OTHER_UID, lambda: (os.mkdir(squatted), os.chmod(squatted, 0o777))) == "(None, None)"
    with pytest.raises(UnsafeQueueLocation, match=f"owned by uid {OTHER_UID}.*QUEUE_PATH"):
        default_queue_path("app")
    assert os.listdir(squatted) == []


@needs_root
def test_another_user_cannot_read_the_queue_files_or_list_their_directory(no_home):
    path = default_queue_path("app")
    conn = storage.connect(path)
    conn.execute("INSERT INTO events (transaction_id, created_at, body) VALUES ('t', 1, '{\"secret\": 1}')")
    os.close(queue_location.open_private_file(path + ".lock"))
    names = [path + suffix for suffix in ("", "-wal", "-shm", ".lock")] + [os.path.dirname(path)]

    def try_to_read() -> str:
        for name in names:
            try:
                (os.listdir if os.path.isdir(name) else open)(name)
            except PermissionError:
                continue
            return "could read " + name
        return "denied"

    assert run_as(OTHER_UID, try_to_read) == "denied"
    conn.close()


@needs_root
def test_a_second_non_root_user_gets_a_clear_error_when_a_third_squatted_its_temp_directory(no_home):
    shared_tmp = no_home  # the temp directory of the forked children too
    victim, attacker = OTHER_UID, THIRD_UID
    squatted = os.path.join(shared_tmp, f"moesifasgi-{victim}")
    assert run_as(attacker, lambda: (os.mkdir(squatted), os.chmod(squatted, 0o755))) == "(None, None)"

    def start_the_app() -> str:
        from moesifasgi.settings import parse_settings

        return parse_settings({"APPLICATION_ID": "app"}).queue_path

    outcome = run_as(victim, start_the_app)
    assert outcome.startswith("ERROR") and f"owned by uid {attacker}" in outcome and "QUEUE_PATH" in outcome, outcome
    # When nobody squatted, the same user gets its own private directory there.
    shutil.rmtree(squatted)
    outcome = run_as(victim, start_the_app)
    assert outcome.startswith(squatted + os.sep), outcome
    st = os.stat(squatted)
    assert st.st_uid == victim and stat.S_IMODE(st.st_mode) == 0o700


@needs_root
def test_a_database_another_user_renamed_over_the_queue_is_refused_not_written(tmp_path):
    path = str(tmp_path / "queue.sqlite")
    storage.connect(path).close()
    os.rename(path, path + ".old")
    theirs = sqlite3.connect(path)
    theirs.execute("CREATE TABLE x (a)")
    theirs.close()
    os.chown(path, OTHER_UID, OTHER_UID)
    os.chmod(path, 0o666)
    with pytest.raises(storage.QueueError, match=f"owned by uid {OTHER_UID}"):
        storage.connect(path)


@needs_root
def test_a_queue_path_through_a_symlink_another_user_owns_is_refused(tmp_path, shared_tmp):
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    link = os.path.join(shared_tmp, "queue-dir")
    assert run_as(OTHER_UID, lambda: os.symlink(str(ours), link)) == "None"
    with pytest.raises(storage.QueueError, match=f"symlink owned by uid {OTHER_UID}"):
        storage.connect(os.path.join(link, "queue.sqlite"))
    assert os.listdir(ours) == []


def test_a_private_queue_directory_inside_a_shared_one_is_accepted_and_the_shared_one_is_not(tmp_path):
    shared = tmp_path / "emptydir"  # as a Kubernetes emptyDir volume: 0777, no sticky bit
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(storage.QueueError, match="writable by other users"):
        storage.connect(str(shared / "queue.sqlite"))
    storage.connect(str(shared / "moesif" / "queue.sqlite")).close()
    assert stat.S_IMODE(os.stat(shared / "moesif").st_mode) == 0o700


@needs_root
def test_an_app_run_as_a_second_user_keeps_its_default_queue_private_from_a_third(no_home, tmp_path):
    from starlette.testclient import TestClient

    from moesifasgi import MoesifMiddleware, writers

    victim, other = OTHER_UID, THIRD_UID

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"secret": "s3"}'})

    def serve_one_call(**settings: str) -> str:
        middleware = MoesifMiddleware(app, settings={"APPLICATION_ID": "app", "FLUSHER": "external", **settings})
        assert TestClient(middleware).get("/x").status_code == 200
        writers.close_all()
        return middleware.settings.queue_path

    # Once here first: the child cannot import what the test interpreter keeps under /root.
    serve_one_call(QUEUE_PATH=str(tmp_path / "warm-up.sqlite"))

    path = run_as(victim, serve_one_call)
    directory = os.path.dirname(path)
    assert directory == os.path.join(no_home, f"moesifasgi-{victim}"), path
    st = os.stat(directory)
    assert st.st_uid == victim and stat.S_IMODE(st.st_mode) == 0o700
    files = {name: os.stat(os.path.join(directory, name)) for name in os.listdir(directory)}
    assert os.path.basename(path) in files
    assert all(f.st_uid == victim and stat.S_IMODE(f.st_mode) == 0o600 for f in files.values()), files
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1  # the call was recorded there
    conn.close()

    def peek() -> str:
        try:
            return str(os.listdir(directory))
        except PermissionError:
            pass
        try:
            open(path, "rb").close()
        except PermissionError:
            return "denied"
        return "could open the queue"

    assert run_as(other, peek) == "denied"


def _pending_seen_by_another_process(path: str) -> int:
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "print(c.execute(\"SELECT value FROM counters WHERE name = 'pending'\").fetchone()[0])")
    return int(subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                              check=True, timeout=60).stdout)


def test_opening_a_second_connection_keeps_the_first_ones_locks_so_events_outlive_another_process_closing(tmp_path):
    # A worker's event writer holds a connection; the worker then opens another
    # one (its helper supervisor) while a second process (a helper whose worker
    # was killed) closes its last connection. If the second open had closed a
    # descriptor of the file, the writer's locks would be gone, the closing
    # process would delete the -wal as its last user, and the writer's later
    # commits would land in the unlinked -wal: acknowledged, never seen, never counted.
    path = str(tmp_path / "q" / "q.sqlite")
    writer = QueueWriter(path, capacity=1000)
    assert writer.submit(("first", 1.0, '{"a": 1}'))
    assert writer.flush(60)
    second = storage.connect(path)
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT COUNT(*) FROM events').fetchall(); c.close()")
    subprocess.run([sys.executable, "-c", code, path], check=True, timeout=60)
    assert os.path.exists(path + "-wal"), "another process deleted the -wal our connections still use"
    assert writer.submit(("second", 2.0, '{"a": 2}'))
    assert writer.flush(60)
    assert writer.committed == 2
    assert _pending_seen_by_another_process(path) == 2
    writer.close()
    second.close()
