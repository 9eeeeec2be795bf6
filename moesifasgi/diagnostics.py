"""Logging that cannot flood: a problem that repeats on every request is logged
once, then at most once per interval with the number of repeats in between."""
from __future__ import annotations

import logging
import threading
import time
from typing import Dict, Tuple

logger = logging.getLogger(__name__)


class ProblemLog:
    def __init__(self, log: logging.Logger = logger, interval: float = 300.0) -> None:
        self._log = log
        self._interval = interval
        self._seen: Dict[str, Tuple[float, int]] = {}
        self._lock = threading.Lock()

    def report(self, key: str, message: str, *args: object, level: int = logging.WARNING, exc_info: bool = False) -> None:
        """Log `message` the first time `key` occurs and then once per interval."""
        now = time.monotonic()
        with self._lock:
            last, repeats = self._seen.get(key, (None, 0))
            if last is not None and now - last < self._interval:
                self._seen[key] = (last, repeats + 1)
                return
            self._seen[key] = (now, 0)
        if repeats:
            message += " (%d more times since the last report)"
            args = args + (repeats,)
        self._log.log(level, message, *args, exc_info=exc_info)

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()


problems = ProblemLog()
