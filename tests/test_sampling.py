from __future__ import annotations

import logging

import pytest

from moesifasgi import sampling
from moesifasgi.sampling import SamplingConfig, keep, weight_for

EVENT = dict(
    verb="POST",
    route="/v1/orders",
    ip_address="203.0.113.7",
    status=201,
    user_id="user-1",
    company_id="acme",
)


def rate(config, **overrides):
    return SamplingConfig.from_dict(config).rate(**{**EVENT, **overrides})


def rule(rate_value, *conditions):
    return {
        "conditions": [{"path": path, "value": value} for path, value in conditions],
        "sample_rate": rate_value,
    }


@pytest.fixture(autouse=True)
def fresh_warnings():
    # Warnings are logged once per process; each test starts from a clean slate.
    sampling._warned.reset()
    yield
    sampling._warned.reset()


def test_no_config_keeps_everything():
    assert rate(None) == 100
    assert rate({}) == 100


def test_the_global_sample_rate_applies_when_nothing_more_specific_does():
    assert rate({"sample_rate": 40}) == 40


def test_a_company_rate_beats_the_global_rate():
    config = {"sample_rate": 40, "company_sample_rate": {"acme": 30}}
    assert rate(config) == 30
    assert rate(config, company_id="other") == 40
    assert rate(config, company_id=None) == 40


def test_a_user_rate_beats_the_company_rate():
    config = {"sample_rate": 40, "company_sample_rate": {"acme": 30}, "user_sample_rate": {"user-1": 20}}
    assert rate(config) == 20
    assert rate(config, user_id="user-2") == 30


def test_a_matching_regex_rule_beats_the_user_rate():
    config = {
        "sample_rate": 40,
        "user_sample_rate": {"user-1": 20},
        "regex_config": [rule(10, ("request.route", "^/v1/orders"))],
    }
    assert rate(config) == 10
    assert rate(config, route="/v1/users") == 20


def test_a_zero_rate_is_honoured_and_not_mistaken_for_missing():
    config = {"sample_rate": 40, "user_sample_rate": {"user-1": 0}}
    assert rate(config) == 0


def test_the_first_matching_regex_rule_wins():
    config = {
        "regex_config": [
            rule(5, ("request.verb", "^GET$")),
            rule(15, ("request.verb", "POST")),
            rule(25, ("request.verb", "POST")),
        ]
    }
    assert rate(config) == 15


def test_a_regex_rule_needs_all_of_its_conditions_to_match():
    config = {
        "sample_rate": 90,
        "regex_config": [
            rule(
                7,
                ("request.verb", "POST"),
                ("request.route", "orders"),
                ("request.ip_address", r"^203\.0\.113\."),
                ("response.status", "^2"),
            )
        ],
    }
    assert rate(config) == 7
    assert rate(config, verb="GET") == 90
    assert rate(config, route="/v1/users") == 90
    assert rate(config, ip_address="198.51.100.1") == 90
    assert rate(config, status=500) == 90


def test_conditions_are_searched_not_anchored():
    config = {"regex_config": [rule(3, ("request.route", "order"))]}
    assert rate(config) == 3


def test_the_status_is_matched_as_a_regex_on_its_text():
    config = {
        "regex_config": [rule(12, ("response.status", "^5\\d\\d$")), rule(13, ("response.status", 404))]
    }
    assert rate(config, status=503) == 12
    assert rate(config, status=404) == 13
    assert rate(config, status=200) == 100


def test_the_route_is_the_path_without_its_query_string():
    config = {"regex_config": [rule(4, ("request.route", "^/v1/orders$"))]}
    assert rate(config, route="/v1/orders?page=2") == 4


def test_a_condition_whose_value_is_missing_from_the_event_does_not_match():
    config = {
        "sample_rate": 60,
        "regex_config": [rule(1, ("request.ip_address", ".*")), rule(2, ("response.status", ".*"))],
    }
    assert rate(config, ip_address=None, status=None) == 60


def test_a_condition_on_an_unknown_path_does_not_match():
    config = {"sample_rate": 60, "regex_config": [rule(1, ("request.body.kind", ".*"))]}
    assert rate(config) == 60


def test_a_rule_without_conditions_never_matches():
    config = {"sample_rate": 60, "regex_config": [{"conditions": [], "sample_rate": 1}]}
    assert rate(config) == 60


def test_a_repeated_condition_path_keeps_its_last_value_like_the_original():
    config = {"regex_config": [rule(8, ("request.verb", "GET"), ("request.verb", "POST"))]}
    assert rate(config) == 8


def test_a_malformed_config_never_raises_and_keeps_its_good_parts(caplog):
    config = {
        "sample_rate": "fifty",
        "user_sample_rate": {"user-1": "ten", "user-2": 20},
        "company_sample_rate": ["not", "a", "map"],
        "regex_config": [
            "not a rule",
            rule(1, ("request.route", "([unclosed")),  # bad regex: whole rule dropped
            rule(2, ("request.route", "orders"), ("request.verb", "([")),
            {"conditions": "nope", "sample_rate": 3},
            {"conditions": [{"path": "request.verb", "value": "POST"}]},  # no rate
            rule(4, (None, "POST")),
            rule(5, ("request.verb", None)),
            rule(6, ("request.route", "orders")),
        ],
    }
    with caplog.at_level(logging.WARNING, logger="moesifasgi.sampling"):
        assert rate(config) == 6
        assert rate(config, route="/other") == 100  # user-1's rate was dropped
        assert rate(config, route="/other", user_id="user-2") == 20
    assert caplog.records, "malformed parts are reported"


def test_each_problem_is_logged_once_however_often_the_config_is_rebuilt(caplog):
    raw = {"sample_rate": "fifty"}
    with caplog.at_level(logging.WARNING, logger="moesifasgi.sampling"):
        for _ in range(5):
            SamplingConfig.from_dict(dict(raw))
    assert len(caplog.records) == 1


@pytest.mark.parametrize("config", [[1, 2], "text", 42, {"regex_config": "x"}, {"sample_rate": float("nan")}])
def test_configs_of_the_wrong_shape_keep_everything(config):
    assert rate(config) == 100


def test_rates_outside_0_to_100_are_clamped():
    assert rate({"sample_rate": 250}) == 100
    assert rate({"sample_rate": -5}) == 0


def test_sampling_config_can_be_used_directly():
    compiled = SamplingConfig.from_dict({"regex_config": [rule(9, ("request.verb", "POST"))]})
    assert compiled.rate(**EVENT) == 9


@pytest.mark.parametrize(
    ("rate_value", "weight"),
    [
        (100, 1),
        (0, 1),
        (150, 1),
        (50, 2),
        (40, 2),
        (60, 1),
        (15, 6),
        (10, 10),
        (33, 3),
        (1, 100),
        (0.5, 200),
        (-1, 1),
    ],
)
def test_weight_is_floor_of_100_over_the_rate(rate_value, weight):
    assert weight_for(rate_value) == weight


def test_weight_of_nan_is_one():
    assert weight_for(float("nan")) == 1


@pytest.mark.parametrize(
    ("rate_value", "rand", "kept"),
    [
        (100, 0.0, True),
        (100, 0.999999, True),
        (0, 0.0, False),
        (50, 0.49, True),
        (50, 0.5, False),
        (10, 0.0999, True),
        (10, 0.1, False),
    ],
)
def test_keep_compares_rand_times_100_with_the_rate(rate_value, rand, kept):
    assert keep(rate_value, rand) is kept


def test_the_middleware_and_every_writer_of_a_queue_file_share_one_config_snapshot(tmp_path):
    from moesifasgi import shared_state
    from moesifasgi.pipeline import EventPipeline
    from moesifasgi.writers import writer_for
    from moesifasgi.settings import parse_settings

    path = str(tmp_path / "q.sqlite")
    settings = parse_settings({"APPLICATION_ID": "app", "QUEUE_PATH": path})
    pipeline = EventPipeline(settings)
    other_app = writer_for(path, 100, "another-app")
    try:
        assert pipeline.remote is shared_state.for_queue(path) is other_app.shared
        pipeline.remote.sampling = SamplingConfig.from_dict({"sample_rate": 0})
        assert pipeline.sample(verb="GET", route="/", ip_address=None, status=200, user_id=None,
                               company_id=None) is None
        pipeline.remote.sampling = SamplingConfig.from_dict({"sample_rate": 25})
        weights = {pipeline.sample(verb="GET", route="/", ip_address=None, status=200, user_id=None,
                                   company_id=None) for _ in range(200)}
        assert weights == {None, 4}
    finally:
        pipeline.remote.sampling = None
        other_app.close(5.0)
