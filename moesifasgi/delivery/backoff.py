"""Retry policy for posts to Moesif: exponential backoff, jitter and Retry-After.

Pure and synchronous on purpose: the flusher owns the sleeping (on an event that
shutdown can interrupt), this module only decides how long.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from typing import Optional

__all__ = ["Backoff", "parse_retry_after", "JITTER_MODES"]

JITTER_MODES = ("full", "decorrelated", "none")


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Turn a ``Retry-After`` header into seconds to wait, or None.

    RFC 9110 allows either delta-seconds or an HTTP date. Moesif documents
    neither, so anything odd is treated as "no hint" rather than an error:
    a bad header must never stall the flusher.

    >>> parse_retry_after("120")
    120.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # A negative or non-finite delay is malformed, not "retry now".
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # Python < 3.10 returned None for some bad dates
        return None
    if when.tzinfo is None:
        # "-0000" dates parse as naive; HTTP dates are always UTC.
        when = when.replace(tzinfo=datetime.timezone.utc)
    current = time.time() if now is None else now
    # A date in the past means the server is ready already.
    return max(0.0, when.timestamp() - current)


class Backoff:
    """Exponential backoff with jitter, one instance per retry sequence.

    ``full`` jitter draws uniformly in ``[0, ceiling]`` where the ceiling grows
    ``initial * multiplier ** attempts`` up to ``maximum``: it spreads many
    workers that failed together best. ``decorrelated`` draws in
    ``[initial, previous * (multiplier + 1)]`` (AWS's variant, 3x with the default
    multiplier), which keeps delays from collapsing to near zero. ``none`` is the
    plain ceiling, mostly for tests and tooling.

    A server's ``Retry-After`` is the delay: the server knows when it will take
    requests again, whatever our backoff has grown to. It is capped at
    ``max_retry_after`` so a hostile or buggy header cannot park the flusher for hours.
    """

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        multiplier: float = 2.0,
        *,
        jitter: str = "full",
        max_retry_after: float = 300.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        if multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if jitter not in JITTER_MODES:
            raise ValueError(f"jitter must be one of {JITTER_MODES}, not {jitter!r}")
        if max_retry_after < 0:
            raise ValueError("max_retry_after must be >= 0")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.multiplier = float(multiplier)
        self.jitter = jitter
        self.max_retry_after = float(max_retry_after)
        self._rng = rng if rng is not None else random.Random()
        self._attempts = 0
        self._previous = self.initial

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempts

    def ceiling(self) -> float:
        """The un-jittered delay for the next attempt."""
        # After ~1000 attempts the float power overflows; the cap applies anyway.
        try:
            raw = self.initial * self.multiplier ** self._attempts
        except OverflowError:
            return self.maximum
        return min(self.maximum, raw)

    def next_delay(self, retry_after: Optional[float] = None) -> float:
        """Seconds to wait before the next attempt; counts one attempt."""
        if self.jitter == "full":
            delay = self._rng.uniform(0.0, self.ceiling())
        elif self.jitter == "decorrelated":
            upper = min(self.maximum, self._previous * (self.multiplier + 1.0))
            delay = self._rng.uniform(self.initial, max(self.initial, upper))
        else:
            delay = self.ceiling()
        self._previous = delay
        self._attempts += 1
        if retry_after is not None and retry_after >= 0:
            # The server said when to come back: after a long outage the backoff
            # has grown toward its cap, and taking the larger of the two kept a
            # recovered collector waiting up to a minute for nothing. The attempt
            # still counts, so failures without the header keep growing the delay.
            delay = min(float(retry_after), self.max_retry_after)
        return delay

    def reset(self) -> None:
        """Forget past failures; call after a successful post."""
        self._attempts = 0
        self._previous = self.initial

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self.initial}, maximum={self.maximum}, "
            f"multiplier={self.multiplier}, jitter={self.jitter!r}, attempts={self._attempts})"
        )
