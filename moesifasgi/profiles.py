"""User and company profile updates, queued durably like events.

    from moesifasgi.profiles import update_user
    update_user({"user_id": "12345", "metadata": {"email": "a@example.com", "plan": "pro"}})

What callers see (validation, the returned Future, never raising) is in the README
("User and company profiles"). Here: a profile is validated in the caller, then
written to the ``profiles`` table of the shared queue file by the same per-process
writer thread as the events (``queue_writer.QueueWriter``, in its group commits),
never on the caller's event loop; the flusher posts them in batches.
Pending writes are finished at interpreter exit. Async code that wants the commit
can ``await asyncio.wrap_future(update_user(profile))``.

Which queue: the ``queue_path`` argument, else the one of the ``MoesifMiddleware``
created in this process, else ``MOESIF_QUEUE_PATH``, else the default path
derived from ``MOESIF_APPLICATION_ID``.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from concurrent.futures import Future
from typing import Any, Dict, Iterable, List, Mapping, Optional

from . import writers
from .diagnostics import problems
from .event_builder import format_time
from .settings import DEFAULT_EVENT_QUEUE_SIZE, resolve_queue_path
from .storage import intake

__all__ = [
    "MAX_PENDING_PROFILES",
    "flush_profiles",
    "update_companies_batch",
    "update_company",
    "update_user",
    "update_users_batch",
    "use_queue_path",
]

logger = logging.getLogger(__name__)

# Profiles are few (one per user or company change); this only guards the disk
# against a runaway loop while Moesif is unreachable.
MAX_PENDING_PROFILES = 100_000
# How long a sync caller waits for the commit before returning the future anyway.
SYNC_WAIT_SECONDS = 30.0

ProfileRow = intake.ProfileRow
_ID_FIELD = {"user": "user_id", "company": "company_id"}
_MODEL = {"user": "UserModel", "company": "CompanyModel"}

_registered: List[str] = []


def use_queue_path(path: str) -> None:
    """Make `path` the default queue for this process (MoesifMiddleware calls this)."""
    if path in _registered:
        _registered.remove(path)
    _registered.append(path)


def update_user(profile: Any, *, queue_path: Optional[str] = None) -> "Future[int]":
    """Queue one user profile: a dict, a moesifapi ``UserModel`` or JSON text. Never raises."""
    return _queue("user", profile, queue_path, batch=False)


def update_users_batch(profiles: Iterable[Any], *, queue_path: Optional[str] = None) -> "Future[int]":
    """Queue several user profiles; invalid ones are left out and counted. Never raises."""
    return _queue("user", profiles, queue_path, batch=True)


def update_company(profile: Any, *, queue_path: Optional[str] = None) -> "Future[int]":
    """Queue one company profile: a dict, a moesifapi ``CompanyModel`` or JSON text. Never raises."""
    return _queue("company", profile, queue_path, batch=False)


def update_companies_batch(profiles: Iterable[Any], *, queue_path: Optional[str] = None) -> "Future[int]":
    """Queue several company profiles; invalid ones are left out and counted. Never raises."""
    return _queue("company", profiles, queue_path, batch=True)


def flush_profiles(timeout: float = 5.0) -> bool:
    """Wait until every profile handed over so far in this process is written."""
    try:
        return writers.flush_all(timeout)
    except Exception:
        return False


# -- validation ----------------------------------------------------------------------

def _as_list(profiles: Iterable[Any], kind: str) -> List[Any]:
    if isinstance(profiles, (Mapping, str, bytes)) or not isinstance(profiles, Iterable):
        raise TypeError(f"update_{'users' if kind == 'user' else 'companies'}_batch takes a list of profiles, "
                        f"got {type(profiles).__name__}")
    return list(profiles)


def _as_dict(profile: Any, kind: str) -> Dict[str, Any]:
    to_dictionary = getattr(profile, "to_dictionary", None)
    if callable(to_dictionary):  # a moesifapi model: its unset fields are None
        return {k: v for k, v in to_dictionary().items() if v is not None}
    if isinstance(profile, Mapping):
        return dict(profile)
    if isinstance(profile, (str, bytes, bytearray)):
        try:
            parsed = json.loads(profile)
        except ValueError as exc:
            raise ValueError(f"a {kind} profile given as text must be a JSON object ({exc})") from None
        if isinstance(parsed, dict):
            return parsed
        raise ValueError(f"a {kind} profile given as text must be a JSON object, got {type(parsed).__name__}")
    raise TypeError(f"a {kind} profile must be a dict, a moesifapi {_MODEL[kind]} or JSON text, "
                    f"got {type(profile).__name__}")


def to_row(profile: Any, kind: str, now: float) -> ProfileRow:
    """Validate one profile and encode it as it will be posted; ValueError/TypeError if unusable."""
    data = _as_dict(profile, kind)
    field = _ID_FIELD[kind]
    ident = data.get(field)
    if isinstance(ident, int) and not isinstance(ident, bool):
        ident = data[field] = str(ident)
    if not isinstance(ident, str) or not ident.strip():
        raise ValueError(f"a {kind} profile needs a non-empty {field}, got {ident!r}")
    for key, value in data.items():
        if isinstance(value, (datetime.datetime, datetime.date)):
            data[key] = value.isoformat()
    if data.get("modified_time") is None:
        # Delivery may come much later (an outage, a restart): the update happened now.
        data["modified_time"] = format_time(now)
    try:
        body = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{kind} profile {ident!r} cannot be sent as JSON ({exc})") from None
    return kind, ident, now, body


def _resolve(queue_path: Optional[str]) -> str:
    if queue_path:
        return resolve_queue_path(queue_path, "")  # "~" never kept as a directory name
    if _registered:
        return _registered[-1]
    app_id = os.environ.get("MOESIF_APPLICATION_ID", "")
    if os.environ.get("MOESIF_QUEUE_PATH") or app_id.strip():
        return resolve_queue_path(None, app_id.strip())
    raise ValueError("moesifasgi: no queue for profiles: pass queue_path=..., create MoesifMiddleware first, "
                     "or set MOESIF_QUEUE_PATH")


def _done(count: int) -> "Future[int]":
    done: "Future[int]" = Future()
    done.set_result(count)
    return done


def _queue(kind: str, given: Any, queue_path: Optional[str], *, batch: bool) -> "Future[int]":
    try:
        return _queue_valid(kind, given, queue_path, batch)
    except Exception:  # our own bug: the caller's request must not become a 500
        problems.report("profiles-internal", "moesifasgi: unexpected error while queueing %s profiles; "
                        "they were dropped", kind, level=logging.ERROR, exc_info=True)
        return _done(0)


def _invalid(kind: str, reason: str) -> None:
    problems.report(f"profile-invalid:{kind}", "moesifasgi: a %s profile was not queued: %s", kind, reason)


def _queue_valid(kind: str, given: Any, queue_path: Optional[str], batch: bool) -> "Future[int]":
    now = time.time()
    rows: List[ProfileRow] = []
    invalid = 0
    try:
        candidates = _as_list(given, kind) if batch else [given]
    except TypeError as exc:
        candidates = []
        invalid = 1
        _invalid(kind, str(exc))
    for profile in candidates:
        try:
            rows.append(to_row(profile, kind, now))
        except (ValueError, TypeError) as exc:
            invalid += 1
            _invalid(kind, str(exc))
    try:
        path = _resolve(queue_path)
    except ValueError as exc:
        problems.report("profiles-no-queue", "%s; %d %s profile(s) dropped", exc, len(rows) + invalid, kind)
        return _done(0)
    if not rows and not invalid:
        return _done(0)
    # Written by the same per-process writer thread as the events of this file,
    # in its group commits; the invalid ones are counted in the same transaction.
    future = writers.writer_for_queue(path, DEFAULT_EVENT_QUEUE_SIZE).submit_profiles(
        rows, MAX_PENDING_PROFILES, (kind, invalid))
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: waiting blocks nobody else
        try:
            future.result(SYNC_WAIT_SECONDS)
        except Exception:
            pass
    return future
