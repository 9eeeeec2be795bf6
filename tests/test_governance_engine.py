"""Governance rules: which calls are blocked or get headers, as Moesif's rules say."""
from __future__ import annotations

import json
import logging
import time

import pytest

from moesifasgi import storage
from moesifasgi.governance import GovernanceRules
from moesifasgi.shared_state import SharedState


def rule(_id, type="regex", *, block=True, conditions=None, status=403, headers=None, body=None,
         applied_to="matching", unidentified=False, variables=None):
    raw = {
        "_id": _id, "name": f"rule {_id}", "type": type, "block": block, "applied_to": applied_to,
        "applied_to_unidentified": unidentified,
        "regex_config": [{"conditions": [{"path": p, "value": v} for p, v in c]} for c in (conditions or [])],
        "response": {"status": status, "headers": headers or {}, "body": body},
    }
    if variables is not None:
        raw["variables"] = [{"name": n, "path": f"body.{n}"} for n in variables]
    return raw


def evaluate(rules, config=None, **request):
    engine = GovernanceRules.from_stored(rules, config)
    assert engine is not None
    args = dict(verb="GET", route="/", ip_address="203.0.113.9", request_headers={}, request_body=None,
                user_id=None, company_id=None)
    args.update(request)
    return engine.evaluate(**args)


def test_no_stored_rules_compile_to_nothing_so_the_request_path_skips_governance():
    assert GovernanceRules.from_stored(None, {"user_rules": {}}) is None
    assert GovernanceRules.from_stored([], None) is None


def test_a_route_regex_rule_blocks_matching_calls_with_its_status_headers_and_body():
    rules = [rule("r-admin", conditions=[[("request.route", "^/admin"), ("request.verb", "POST|DELETE")]],
                  status=451, headers={"X-Blocked-By": "policy"}, body={"error": "no admin"})]
    blocked = evaluate(rules, verb="DELETE", route="/admin/users/1")
    assert (blocked.blocked_by, blocked.status, blocked.body) == ("r-admin", 451, {"error": "no admin"})
    assert blocked.headers == {"x-blocked-by": "policy"}
    assert not evaluate(rules, verb="GET", route="/admin/users/1").blocked
    assert not evaluate(rules, verb="DELETE", route="/public/admin").blocked


def test_any_one_regex_config_entry_matching_is_enough():
    rules = [rule("r", conditions=[[("request.route", "^/a$")], [("request.ip_address", r"^10\.")]])]
    assert evaluate(rules, route="/a").blocked
    assert evaluate(rules, route="/b", ip_address="10.1.2.3").blocked
    assert not evaluate(rules, route="/b").blocked


def test_a_header_rule_matches_the_header_whatever_the_case_of_its_name():
    rules = [rule("r-key", conditions=[[("request.headers.X-Api-Key", "^revoked-")]])]
    assert evaluate(rules, request_headers={"x-api-key": "revoked-123"}).blocked_by == "r-key"
    assert not evaluate(rules, request_headers={"x-api-key": "good-123"}).blocked
    assert not evaluate(rules, request_headers={}).blocked


def test_a_json_body_field_rule_matches_top_level_and_nested_fields_as_text():
    rules = [rule("r-plan", conditions=[[("request.body.plan", "^free$")]]),
             rule("r-qty", conditions=[[("request.body.order.quantity", "^[0-9]{4,}$")]])]
    assert evaluate(rules, request_body={"plan": "free"}).blocked_by == "r-plan"
    assert evaluate(rules, request_body={"order": {"quantity": 50000}}).blocked_by == "r-qty"
    assert not evaluate(rules, request_body={"order": {"quantity": 5}}).blocked
    assert not evaluate(rules, request_body=["plan", "free"]).blocked
    assert not evaluate(rules, request_body=None).blocked


def test_a_graphql_operation_name_rule_blocks_that_operation_only():
    rules = [rule("r-gql", conditions=[[("request.route", "^/graphql"),
                                        ("request.body.operationName", "^DeleteEverything$")]])]
    query = {"query": "mutation DeleteEverything { x }", "operationName": "DeleteEverything"}
    assert evaluate(rules, verb="POST", route="/graphql", request_body=query).blocked_by == "r-gql"
    query["operationName"] = "ListThings"
    assert not evaluate(rules, verb="POST", route="/graphql", request_body=query).blocked


def test_a_user_cohort_rule_blocks_its_users_with_their_variable_values_substituted():
    rules = [rule("quota", "user", variables=["0", "plan"], status=429,
                  headers={"X-Plan": "{{plan}}", "X-Limit": "{{0}}/day"},
                  body={"error": "Plan {{plan}} allows {{0}} calls", "hint": ["upgrade {{plan}}", 7]})]
    config = {"user_rules": {"alice": [{"rules": "quota", "values": {"0": "1000", "plan": "free"}}],
                             "bob": [{"rules": "quota", "values": {"plan": "trial"}}]}}
    alice = evaluate(rules, config, user_id="alice")
    assert (alice.blocked_by, alice.status) == ("quota", 429)
    assert alice.headers == {"x-plan": "free", "x-limit": "1000/day"}
    assert alice.body == {"error": "Plan free allows 1000 calls", "hint": ["upgrade free", 7]}
    bob = evaluate(rules, config, user_id="bob")
    assert bob.body["error"] == "Plan trial allows UNKNOWN calls"  # a missing value, as in the original
    carol = evaluate(rules, config, user_id="carol")
    assert not carol.blocked and carol.headers == {}


def test_a_not_matching_user_rule_applies_to_identified_users_outside_its_cohort():
    rules = [rule("paying-only", "user", applied_to="not_matching", body="subscribe first", status=402)]
    config = {"user_rules": {"payer": [{"rules": "paying-only"}]}}
    assert evaluate(rules, config, user_id="stranger").blocked_by == "paying-only"
    assert not evaluate(rules, config, user_id="payer").blocked
    assert not evaluate(rules, config, user_id=None).blocked  # unidentified only if applied_to_unidentified


def test_a_company_rule_blocks_the_companies_of_its_cohort():
    rules = [rule("co-suspended", "company", body={"error": "company {{name}} suspended"}, variables=["name"])]
    config = {"company_rules": {"acme": [{"rules": "co-suspended", "values": {"name": "Acme"}}]}}
    decision = evaluate(rules, config, company_id="acme", user_id="u1")
    assert decision.blocked_by == "co-suspended"
    assert decision.body == {"error": "company Acme suspended"}
    assert not evaluate(rules, config, company_id="globex").blocked


def test_an_unidentified_user_rule_blocks_only_calls_without_a_user():
    rules = [rule("login-required", "user", unidentified=True, conditions=[[("request.route", "^/api/")]],
                  status=401, body={"error": "log in"}),
             rule("cohort-only", "user", unidentified=False, status=418)]
    assert evaluate(rules, route="/api/x", user_id=None).blocked_by == "login-required"
    assert not evaluate(rules, route="/docs", user_id=None).blocked
    assert not evaluate(rules, route="/api/x", user_id="u1").blocked


def test_non_blocking_rules_only_add_their_headers_and_later_rules_win_a_header_clash():
    rules = [rule("h1", block=False, headers={"X-Env": "one", "X-A": "a"}),
             rule("h2", block=False, headers={"x-env": "two"}, conditions=[[("request.verb", "GET")]]),
             rule("h3", block=False, headers={"X-Never": "n"}, conditions=[[("request.verb", "PUT")]])]
    decision = evaluate(rules)
    assert not decision.blocked and decision.status is None and decision.body is None
    assert decision.headers == {"x-env": "two", "x-a": "a"}


def test_regex_then_company_then_user_rules_apply_and_the_last_blocking_rule_wins():
    rules = [rule("by-user", "user", status=429, headers={"X-Who": "user"}),
             rule("by-regex", status=403, headers={"X-Who": "regex", "X-Regex": "1"}),
             rule("by-company", "company", status=402, headers={"X-Who": "company"})]
    config = {"user_rules": {"u": [{"rules": "by-user"}]}, "company_rules": {"c": [{"rules": "by-company"}]}}
    decision = evaluate(rules, config, user_id="u", company_id="c")
    assert (decision.blocked_by, decision.status) == ("by-user", 429)
    assert decision.headers == {"x-who": "user", "x-regex": "1"}
    assert evaluate(rules, config, company_id="c").blocked_by == "by-company"


def test_a_rule_id_in_the_config_that_no_rule_has_is_skipped_instead_of_raising():
    rules = [rule("real", "user", status=403)]
    config = {"user_rules": {"u": [{"rules": "deleted-rule", "values": {}}, {"rules": "real"}]}}
    assert evaluate(rules, config, user_id="u").blocked_by == "real"


def test_a_cohort_rule_that_does_not_match_does_not_stop_the_next_ones():
    rules = [rule("posts-only", "user", conditions=[[("request.verb", "POST")]]),
             rule("everything", "user", block=False, headers={"X-Seen": "yes"})]
    config = {"user_rules": {"u": [{"rules": "posts-only"}, {"rules": "everything"}]}}
    decision = evaluate(rules, config, user_id="u", verb="GET")
    assert not decision.blocked and decision.headers == {"x-seen": "yes"}


def test_header_values_from_rules_or_config_cannot_inject_headers():
    rules = [rule("r", "user", block=False, headers={"X-Note": "hi {{v}}"}, variables=["v"])]
    config = {"user_rules": {"u": [{"rules": "r", "values": {"v": "x\r\nSet-Cookie: evil=1"}}]}}
    assert evaluate(rules, config, user_id="u").headers == {"x-note": "hi xSet-Cookie: evil=1"}


@pytest.mark.parametrize("rules", [{"not": "a list"}, "text", [1, 2, 3], [{"_id": "x", "type": "weird"}]])
def test_rules_of_the_wrong_shape_count_as_no_rules_with_one_warning(rules, caplog):
    with caplog.at_level(logging.WARNING):
        assert GovernanceRules.from_stored(rules, {}) is None
    assert len([r for r in caplog.records if "governance" in r.getMessage()]) == 1


def test_a_malformed_rule_is_dropped_with_one_warning_and_the_others_still_apply(caplog):
    rules = [rule("bad-regex", conditions=[[("request.route", "([unclosed")]]),
             rule("no-status", status=None),
             {"type": "regex", "block": True},
             rule("good", conditions=[[("request.route", "^/x")]])]
    config = {"user_rules": "not an object"}
    with caplog.at_level(logging.WARNING):
        engine = GovernanceRules.from_stored(rules, config)
    [warning] = [r for r in caplog.records if "governance" in r.getMessage()]
    assert "4 malformed" in warning.getMessage() and "bad regex" in warning.getMessage()
    assert engine is not None
    decision = engine.evaluate(verb="GET", route="/x", ip_address=None, request_headers={}, request_body=None,
                               user_id="u", company_id=None)
    assert decision.blocked_by == "good"


def test_a_config_that_is_not_an_object_leaves_the_regex_rules_working(caplog):
    with caplog.at_level(logging.WARNING):
        decision = evaluate([rule("r")], config=["nonsense"])
    assert decision.blocked_by == "r"
    assert any("config is not an object" in r.getMessage() for r in caplog.records)


def _store(conn, key, value):
    conn.execute("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                 "SET value = excluded.value, updated_at = excluded.updated_at", (key, json.dumps(value), time.time()))


def test_the_shared_state_recompiles_the_rules_when_rules_or_config_change(tmp_path):
    conn = storage.connect(str(tmp_path / "q.sqlite"))
    state = SharedState()
    state.refresh(conn)
    assert state.governance is None
    _store(conn, "rules", [rule("quota", "user")])
    state.refresh(conn)
    first = state.governance
    assert first is not None and not first.empty
    request = dict(verb="GET", route="/", ip_address=None, request_headers={}, request_body=None, company_id=None)
    assert not first.evaluate(user_id="u", **request).blocked
    _store(conn, "config", {"user_rules": {"u": [{"rules": "quota"}]}})
    state.refresh(conn)
    assert state.governance is not first
    assert state.governance.evaluate(user_id="u", **request).blocked_by == "quota"
    _store(conn, "rules", [])
    state.refresh(conn)
    assert state.governance is None
    conn.close()
