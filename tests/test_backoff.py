from __future__ import annotations

import random

import pytest

from moesifasgi_flush.backoff import Backoff, parse_retry_after

NOW = 1_445_412_470.0  # 2015-10-21 07:27:50 UTC


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("0", 0.0), ("1.5", 1.5), ("  7 ", 7.0)],
)
def test_retry_after_in_seconds_is_returned_as_a_float(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date_becomes_seconds_from_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 10.0


def test_retry_after_with_a_numeric_utc_offset_is_understood() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 09:28:30 +0200", now=NOW) == 40.0


def test_retry_after_date_in_the_past_means_retry_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=NOW) == 0.0


def test_retry_after_date_without_now_uses_the_clock() -> None:
    # A date far in the future gives a large positive delay against the real clock.
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT") > 365 * 24 * 3600


@pytest.mark.parametrize("header", [None, "", "   ", "soon", "-5", "nan", "inf", "Wed, 99 Foo"])
def test_absent_or_malformed_retry_after_is_none(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_delays_double_from_initial_and_stop_at_the_maximum() -> None:
    backoff = Backoff(initial=1.0, maximum=20.0, multiplier=2.0, jitter="none")
    assert [backoff.next_delay() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert backoff.attempts == 7


def test_many_attempts_never_overflow_and_stay_at_the_maximum() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter="none")
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 60.0


def test_full_jitter_stays_between_zero_and_the_growing_ceiling() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, rng=random.Random(7))
    delays = []
    for attempt in range(12):
        ceiling = min(60.0, 2.0**attempt)
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        delays.append(delay)
    # Jitter really spreads: the delays are not simply the ceilings.
    assert len(set(delays)) == len(delays)
    assert any(d < min(60.0, 2.0**i) * 0.9 for i, d in enumerate(delays))


def test_same_seed_gives_the_same_delays() -> None:
    first = Backoff(rng=random.Random(42))
    second = Backoff(rng=random.Random(42))
    assert [first.next_delay() for _ in range(8)] == [second.next_delay() for _ in range(8)]


def test_decorrelated_jitter_stays_between_initial_and_three_times_the_previous_delay() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter="decorrelated", rng=random.Random(3))
    previous = 0.5
    delays = []
    for _ in range(40):
        delay = backoff.next_delay()
        assert 0.5 <= delay <= min(30.0, previous * 3.0)
        previous = delay
        delays.append(delay)
    assert max(delays) > 10.0  # it does grow toward the cap


def test_retry_after_is_the_delay_whatever_the_backoff_has_grown_to() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter="none")
    assert backoff.next_delay(retry_after=120.0) == 120.0  # longer than the backoff
    for _ in range(6):
        backoff.next_delay()  # a long outage: the backoff is at its 60 s cap now
    assert backoff.next_delay(retry_after=2.0) == 2.0  # the server's word wins
    assert backoff.next_delay() == 60.0  # without the header, still backing off


def test_huge_retry_after_is_capped() -> None:
    assert Backoff(jitter="none").next_delay(retry_after=86_400.0) == 300.0
    assert Backoff(jitter="none", max_retry_after=30.0).next_delay(retry_after=999.0) == 30.0


def test_reset_starts_the_sequence_again() -> None:
    backoff = Backoff(initial=2.0, maximum=60.0, jitter="none")
    for _ in range(4):
        backoff.next_delay()
    assert backoff.attempts == 4
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 2.0


def test_decorrelated_reset_forgets_the_previous_delay() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter="decorrelated", rng=random.Random(1))
    for _ in range(20):
        backoff.next_delay()
    backoff.reset()
    assert 1.0 <= backoff.next_delay() <= 3.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": 5, "maximum": 1}, {"multiplier": 0.5}, {"jitter": "some"}],
)
def test_nonsense_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
