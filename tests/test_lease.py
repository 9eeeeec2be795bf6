from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys

from moesifasgi import storage
from moesifasgi_flush.lease import Lease, current_leader, make_owner, owner_is_dead, parse_owner


def test_only_one_owner_holds_the_lease_until_it_expires(tmp_path):
    conn = storage.connect(str(tmp_path / "q.sqlite"))
    a, b = Lease("h:1:a", duration=10), Lease("h:2:b", duration=10)
    assert a.try_acquire(conn, now=100).leader
    assert not b.try_acquire(conn, now=105).leader
    assert a.try_acquire(conn, now=105).leader  # the holder renews by acquiring again
    assert not b.try_acquire(conn, now=114).leader
    taken = b.try_acquire(conn, now=115.5)
    assert taken.leader and taken.previous_owner == "h:1:a"


def test_a_lost_lease_cannot_be_renewed_and_a_released_one_is_taken_at_once(tmp_path):
    conn = storage.connect(str(tmp_path / "q.sqlite"))
    a, b = Lease(duration=1), Lease(duration=1)
    assert a.try_acquire(conn, now=100).leader
    assert a.renew(conn, now=100.5)
    assert b.try_acquire(conn, now=102).leader
    assert not a.renew(conn, now=102.1)
    assert b.release(conn)
    assert a.try_acquire(conn, now=102.2).leader


def test_the_current_leader_is_reported_with_pid_host_and_since(tmp_path):
    conn = storage.connect(str(tmp_path / "q.sqlite"))
    assert current_leader(conn) is None
    lease = Lease(duration=5)
    lease.try_acquire(conn, now=1000.0)
    leader = current_leader(conn, now=1001.0)
    assert (leader["pid"], leader["host"], leader["since"]) == (os.getpid(), socket.gethostname(), 1000.0)
    assert current_leader(conn, now=1006.0) is None


def test_an_owner_is_dead_only_when_it_was_a_local_process_that_has_exited():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host = socket.gethostname()
    assert parse_owner(make_owner())[1] == os.getpid()
    assert owner_is_dead(f"{host}:{proc.pid}:abcd")
    assert not owner_is_dead(f"{host}:{os.getpid()}:abcd")
    assert not owner_is_dead(f"some-other-host:{proc.pid}:abcd")
    assert not owner_is_dead("not an owner")


def _race(path: str, start, results) -> None:
    conn = storage.connect(path)
    start.wait()
    results.put(Lease(duration=30).try_acquire(conn).leader)


def test_processes_racing_for_a_free_lease_elect_exactly_one(tmp_path):
    path = str(tmp_path / "q.sqlite")
    storage.connect(path).close()
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert sorted(outcomes) == [False, False, False, True]
