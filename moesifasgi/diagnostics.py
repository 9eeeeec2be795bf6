"""Logging that cannot flood: the one way this package logs a problem that repeats.

A problem is reported under a key. With an interval, it is logged the first time,
then at most once per interval with the number of repeats in between (a problem
met on every request). Without one, it is logged once until :meth:`ProblemLog.clear`
says it is over (a failure that lasts an episode: an outage, a broken queue path),
and ``clear`` tells the caller whether to log the recovery.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Dict, Optional, Tuple

__all__ = ["ProblemLog", "problems"]

logger = logging.getLogger(__name__)


class ProblemLog:
    def __init__(self, log: logging.Logger = logger, interval: Optional[float] = 300.0,
                 max_keys: int = 1024) -> None:
        self._log = log
        self._interval = interval
        self._max_keys = max_keys  # past it a new key is logged every time rather than remembered
        self._seen: Dict[str, Tuple[float, int]] = {}
        self._lock = threading.Lock()

    def report(self, key: str, message: str, *args: object, level: int = logging.WARNING,
               exc_info: bool = False, note_repeats: bool = True) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval (or, without
        one, since it was cleared); True when it was logged. ``note_repeats`` appends
        how many reports were held back since the last line."""
        now = time.monotonic()
        with self._lock:
            last, repeats = self._seen.get(key, (None, 0))
            if last is not None and (self._interval is None or now - last < self._interval):
                self._seen[key] = (last, repeats + 1)
                return False
            if last is not None or len(self._seen) < self._max_keys:
                self._seen[key] = (now, 0)
        if repeats and note_repeats:
            message += " (%d more times since the last report)"
            args = args + (repeats,)
        self._log.log(level, message, *args, exc_info=exc_info)
        return True

    def clear(self, key: str) -> bool:
        """The problem ``key`` is over; True if it had been reported (log the recovery)."""
        with self._lock:
            return self._seen.pop(key, None) is not None

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()


problems = ProblemLog()
