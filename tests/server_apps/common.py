"""What every matrix app shares: the middleware settings and the slow call's timing.

The queue file and the flusher mode come from the environment
(MOESIF_QUEUE_PATH, MOESIF_FLUSHER=external), so that the test reads exactly
what the server's workers committed.
"""
from __future__ import annotations

import os
from typing import Any, Dict

SETTINGS: Dict[str, Any] = {"APPLICATION_ID": "matrix-application-id"}

# Long enough that the test's SIGTERM lands while the call is in flight, so the
# call completes during the server's graceful stop.
SLOW_SECONDS = float(os.environ.get("MATRIX_SLOW_SECONDS", "2.5"))


def slow_call_started() -> None:
    """Tell the test that a slow call reached the app (it waits for this before SIGTERM)."""
    marks = os.environ.get("MATRIX_MARKS")
    if marks:
        with open(marks, "a") as f:
            f.write(f"{os.getpid()}\n")
