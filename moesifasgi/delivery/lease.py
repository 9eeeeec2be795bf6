"""Leader election through a lease row in the queue file.

One row per lease name in `leases`; whoever holds an unexpired row is the leader.
The holder renews `expires_at` every few seconds; a holder that dies (even by
`kill -9`) simply stops renewing, and any other process takes the row once it has
expired. Wall-clock time is used because the row is compared across processes.

Claims on events, not the lease, keep two drainers from posting the same event:
the lease only decides who drains continuously, so that N web workers do not all
compete for the same rows.
"""
from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

from moesifasgi.storage import lease_store

LEASE_NAME = "flusher"
# A dead leader is replaced within LEASE_SECONDS + the contenders' poll interval:
# kept under 15 s, so an outage of the flusher never outlasts a pod's restart.
LEASE_SECONDS = 10.0
RENEW_INTERVAL = 3.0


def make_owner() -> str:
    """host:pid:random: unique per process incarnation, readable in `status`."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def parse_owner(owner: str) -> Optional[tuple]:
    """(host, pid) from an owner string, or None when it is not ours."""
    host, sep, rest = owner.rpartition(":")
    host, sep2, pid = host.rpartition(":")
    if not sep or not sep2 or not pid.isdigit():
        return None
    return host, int(pid)


def owner_is_dead(owner: str) -> bool:
    """True only when `owner` was a process on this host that no longer exists.

    Unknown hosts are presumed alive: their claims expire on their own.
    """
    parsed = parse_owner(owner)
    if parsed is None or parsed[0] != socket.gethostname():
        return False
    try:
        os.kill(parsed[1], 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but belongs to someone else
        return False
    return False


@dataclass
class Acquired:
    """The outcome of one attempt: whether we lead, and whom we replaced."""
    leader: bool
    previous_owner: Optional[str] = None


class Lease:
    def __init__(self, owner: Optional[str] = None, *, name: str = LEASE_NAME,
                 duration: float = LEASE_SECONDS) -> None:
        self.owner = owner or make_owner()
        self.name = name
        self.duration = duration
        parsed = parse_owner(self.owner)
        self.host, self.pid = parsed if parsed else (socket.gethostname(), os.getpid())

    def try_acquire(self, conn: sqlite3.Connection, now: Optional[float] = None) -> Acquired:
        """Take the lease if it is free, expired or already ours (then it is renewed)."""
        now = time.time() if now is None else now
        # Contenders look first without the write lock: every worker asks every few
        # seconds, and the web workers' writers need that lock.
        held = lease_store.lease_holder(conn, self.name)
        if held is not None and held[0] != self.owner and held[1] >= now:
            return Acquired(False)
        leader, previous = lease_store.take_lease(conn, self.name, self.owner, self.pid, self.host, now,
                                                  now + self.duration)
        return Acquired(leader, previous_owner=previous)

    def renew(self, conn: sqlite3.Connection, now: Optional[float] = None) -> bool:
        """Extend our lease; False when we lost it (someone took it after it expired)."""
        now = time.time() if now is None else now
        return lease_store.extend_lease(conn, self.name, self.owner, now + self.duration)

    def release(self, conn: sqlite3.Connection) -> bool:
        """Give the lease up so that another process takes over at once."""
        return lease_store.drop_lease(conn, self.name, self.owner)


def current_leader(conn: sqlite3.Connection, name: str = LEASE_NAME,
                   now: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """{owner, pid, host, since, expires_at} of the unexpired holder, or None."""
    return lease_store.unexpired_lease(conn, name, time.time() if now is None else now)
