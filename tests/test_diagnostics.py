from __future__ import annotations

import logging

from moesifasgi.diagnostics import ProblemLog

log = logging.getLogger("tests.diagnostics")


def messages(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_without_an_interval_a_problem_is_logged_once_until_it_is_cleared(caplog):
    problems = ProblemLog(log, interval=None)
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert problems.report("post", "failed (%s)", "503") is True
        assert problems.report("post", "failed (%s)", "503") is False
        assert problems.clear("post") is True and problems.clear("post") is False
        assert problems.report("post", "failed (%s)", "timeout") is True
    assert messages(caplog) == ["failed (503)", "failed (timeout)"]


def test_with_an_interval_the_next_line_says_how_many_reports_were_held_back(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("moesifasgi.diagnostics.time.monotonic", lambda: now[0])
    problems = ProblemLog(log, interval=60.0)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for _ in range(3):
            problems.report("full", "queue full")
        now[0] += 61
        problems.report("full", "queue full")
        now[0] += 61
        problems.report("full", "moved %d events", 7, note_repeats=False)
    assert messages(caplog) == ["queue full", "queue full (2 more times since the last report)", "moved 7 events"]


def test_past_its_key_bound_a_new_problem_is_still_logged_but_not_remembered(caplog):
    problems = ProblemLog(log, interval=None, max_keys=1)
    with caplog.at_level(logging.WARNING, logger=log.name):
        problems.report("a", "a")
        problems.report("b", "b")
        problems.report("b", "b")
        problems.report("a", "a")
    assert messages(caplog) == ["a", "b", "b"]
