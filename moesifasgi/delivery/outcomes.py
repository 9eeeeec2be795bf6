"""The two vocabularies of delivery: what Moesif's answer to a post means, and why a drain stopped.

Both are ``str`` enums, so a value compares, hashes, formats and serialises as its
text ("auth", "deadline"): logs, ``moesif-flush`` output and stored state read the same.
"""
from __future__ import annotations

from enum import Enum

__all__ = ["PostOutcome", "StopReason"]


class _TextEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class PostOutcome(_TextEnum):
    """What Moesif's answer to a post means for the rows posted (``client.classify_status``)."""

    OK = "ok"  # accepted: delete the rows
    RETRY = "retry"  # transient: keep the rows, back off, try again
    AUTH = "auth"  # 401/402/403: the key or subscription is bad; stop and probe later
    REJECT = "reject"  # 400 and other 4xx: a bad row poisons the batch; split it
    TOO_LARGE = "too_large"  # 413: split the batch


class StopReason(_TextEnum):
    """Why a drain returned with events left (``DrainStats.error``).

    Either the outcome of the post that failed, converted with :meth:`after`, or a
    limit of the drain itself.
    """

    AUTH = "auth"
    RETRY = "retry"
    REJECT = "reject"
    TOO_LARGE = "too_large"
    DEADLINE = "deadline"  # --max-seconds (or the shutdown grace) ran out
    INTERRUPTED = "interrupted"  # a signal asked the drain to stop
    UNREACHABLE = "unreachable"  # the CLI gave up on a Moesif it cannot reach

    @classmethod
    def after(cls, outcome: PostOutcome) -> StopReason:
        """The reason a drain stops after a post that ended with ``outcome``."""
        return cls(outcome)
