from __future__ import annotations

import pytest

from moesifasgi.conditions import BadCondition, compile_condition
from moesifasgi.governance import GovernanceRules
from moesifasgi.sampling import SamplingConfig

BAD_CONDITIONS = [
    "not an object",
    {"path": 3, "value": "x"},
    {"path": "request.route", "value": True},
    {"path": "request.route", "value": ["a"]},
    {"path": "request.route", "value": "([unclosed"},
]


def test_a_condition_compiles_to_its_path_and_a_searching_regex() -> None:
    path, pattern = compile_condition({"path": "request.route", "value": "^/health"})
    assert path == "request.route" and pattern.search("/health/live")


def test_a_numeric_condition_value_is_a_regex_of_its_text() -> None:
    assert compile_condition({"path": "response.status", "value": 404})[1].search("404")


@pytest.mark.parametrize("condition", BAD_CONDITIONS)
def test_governance_and_sampling_refuse_the_same_conditions(condition: object) -> None:
    with pytest.raises(BadCondition):
        compile_condition(condition)
    rules = GovernanceRules.from_stored(
        [{"_id": "r", "type": "regex", "block": False, "regex_config": [{"conditions": [condition]}]}], None)
    assert rules is None  # the only rule was dropped
    sampling = SamplingConfig.from_dict({"regex_config": [{"conditions": [condition], "sample_rate": 5}]})
    assert sampling.rules == ()
