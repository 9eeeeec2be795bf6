"""Moesif's server-side configuration as this process last read it from the queue file.

The flusher's leader fetches `/v1/config` (and `/v1/rules`) and stores them in the
`kv` table. There is one :class:`SharedState` per queue file per process
(:func:`for_queue`), read by those who use it (the middleware's governance check and
sampling, through the event pipeline); the writer thread of that file, which holds
the connection, re-reads the table every few seconds and swaps in new immutable
snapshots. The request path only reads attributes: no I/O, no lock.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any, Dict, Optional

from .governance import GovernanceRules
from .per_process import PerProcess
from .sampling import SamplingConfig
from .storage.queue_store import kv_get_many

logger = logging.getLogger(__name__)

CONFIG_KEY = "config"
RULES_KEY = "rules"


class SharedState:
    refresh_interval = 2.0

    def __init__(self) -> None:
        self.sampling: Optional[SamplingConfig] = None
        self.config: Optional[dict] = None
        self.rules: Optional[Any] = None
        # Compiled from rules + config; None when there are no rules, so the
        # request path only tests it for None.
        self.governance: Optional[GovernanceRules] = None
        self._next_refresh = 0.0
        self._seen: dict = {}

    def due(self) -> bool:
        return time.monotonic() >= self._next_refresh

    def refresh(self, conn: sqlite3.Connection) -> None:
        self._next_refresh = time.monotonic() + self.refresh_interval
        rows = kv_get_many(conn, (CONFIG_KEY, RULES_KEY))
        changed = False
        for key, value, updated_at in rows:
            if self._seen.get(key) == updated_at:
                continue
            self._seen[key] = updated_at
            try:
                parsed = json.loads(value)
            except ValueError:
                logger.warning("moesifasgi: ignoring an unreadable %s stored in the queue file", key)
                continue
            changed = True
            if key == CONFIG_KEY:
                self.config = parsed if isinstance(parsed, dict) else None
                self.sampling = SamplingConfig.from_dict(self.config) if self.config else None
            else:
                self.rules = parsed
        if changed:
            # Cohorts and variable values live in the config, so either change rebuilds.
            self.governance = GovernanceRules.from_stored(self.rules, self.config)


_by_queue: PerProcess[Dict[str, SharedState]] = PerProcess(dict)


def for_queue(path: str) -> SharedState:
    """This process's snapshot of the config stored in the queue file at ``path``."""
    states = _by_queue.get()
    state = states.get(path)
    if state is None:
        state = states.setdefault(path, SharedState())
    return state
