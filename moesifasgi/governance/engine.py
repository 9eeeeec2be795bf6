"""Moesif governance rules: decide, before the app runs, whether to block a call.

A pure engine over the two documents the flusher's leader stores: the rules from
``GET /v1/rules`` and the config from ``GET /v1/config`` (whose ``user_rules`` and
``company_rules`` say which users and companies are in each rule's cohort, and the
values of the rule's ``{{variables}}``). It is compiled once per stored snapshot
by :meth:`GovernanceRules.from_stored`; :meth:`GovernanceRules.evaluate` then only
runs precompiled regexes. No I/O, no locks.

Semantics follow ``moesifapi.governance_manager``: regex rules first, then company
rules, then user rules; every matching rule adds its response headers (a later
rule overwrites an earlier one's header of the same name), and a matching blocking
rule sets the status, body and ``blocked_by`` (the last blocking rule applied
wins, as in the original). Two bugs of the original are fixed: a rule id in the
config that no rule has is skipped instead of raising, and a cohort rule that
does not match the request no longer stops the evaluation of the next ones.

Malformed input never raises: a rule that cannot be understood is dropped, rules
or a config of the wrong shape count as no rules, and each snapshot logs one
warning saying what was ignored.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .rule import Malformed, Req, Rule

__all__ = ["GovernanceDecision", "GovernanceRules"]

logger = logging.getLogger(__name__)

# CR/LF would let a rule (or a config value substituted into it) inject headers;
# anything outside printable ASCII is not a safe header value either.
_UNSAFE_HEADER_CHARS = re.compile(r"[^\t\x20-\x7e]")
_EMPTY: Mapping[str, Any] = {}


class GovernanceDecision:
    """What the rules say about one request. ``blocked_by`` is None when the app runs."""

    __slots__ = ("blocked_by", "status", "headers", "body")

    def __init__(self, blocked_by: Optional[str] = None, status: Optional[int] = None,
                 headers: Optional[Dict[str, str]] = None, body: Any = None) -> None:
        self.blocked_by = blocked_by
        self.status = status
        self.headers: Dict[str, str] = headers if headers is not None else {}
        self.body = body

    @property
    def blocked(self) -> bool:
        return self.blocked_by is not None

    def __repr__(self) -> str:
        return (f"GovernanceDecision(blocked_by={self.blocked_by!r}, status={self.status!r}, "
                f"headers={self.headers!r}, body={self.body!r})")


_Cohorts = Dict[str, Dict[str, Mapping[str, Any]]]  # entity id -> rule id -> variable values


class _Entity:
    """The user (or company) half of the rules, with its cohorts from the config."""

    __slots__ = ("by_id", "unidentified", "not_matching", "cohorts")

    def __init__(self, rules: List[Rule], cohorts: _Cohorts) -> None:
        self.by_id = {r.id: r for r in rules}
        self.unidentified = [r for r in rules if r.unidentified]
        self.not_matching = [r for r in rules if r.not_matching]
        self.cohorts = cohorts

    def applicable(self, entity_id: Optional[str], req: Req, out: List[Tuple[Rule, Mapping[str, Any]]]) -> None:
        if not entity_id:
            out.extend((r, _EMPTY) for r in self.unidentified if r.matches(req))
            return
        cohort = self.cohorts.get(entity_id, _EMPTY)
        for rule_id, values in cohort.items():
            rule = self.by_id.get(rule_id)
            # continue, not break: the original's break skipped every later rule.
            if rule is not None and not rule.not_matching and rule.matches(req):
                out.append((rule, values))
        out.extend((r, _EMPTY) for r in self.not_matching if r.id not in cohort and r.matches(req))


def _cohorts(raw: Any, where: str, problems: List[str]) -> _Cohorts:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"config {where} is not an object")
        return {}
    cohorts: _Cohorts = {}
    for entity_id, entries in raw.items():
        if not isinstance(entries, list):
            problems.append(f"config {where}[{entity_id!r}] is not a list")
            continue
        cohort: Dict[str, Mapping[str, Any]] = {}
        for entry in entries:
            rule_id = entry.get("rules") if isinstance(entry, Mapping) else None
            if not isinstance(rule_id, str):
                problems.append(f"config {where}[{entity_id!r}] has an entry without a rule id")
                continue
            values = entry.get("values")
            cohort[rule_id] = values if isinstance(values, Mapping) else _EMPTY
        cohorts[str(entity_id)] = cohort
    return cohorts


class GovernanceRules:
    """Stored rules and config, compiled. Build with :meth:`from_stored`."""

    __slots__ = ("regex", "users", "companies", "needs_body", "needs_user", "needs_company")

    def __init__(self, rules: List[Rule], config: Optional[Mapping[str, Any]], problems: List[str]) -> None:
        config = config or _EMPTY
        self.regex = [r for r in rules if r.kind == "regex"]
        self.users = _Entity([r for r in rules if r.kind == "user"], _cohorts(config.get("user_rules"), "user_rules", problems))
        self.companies = _Entity([r for r in rules if r.kind == "company"],
                                 _cohorts(config.get("company_rules"), "company_rules", problems))
        self.needs_body = any(r.needs_body for r in rules)
        self.needs_user = bool(self.users.by_id)
        self.needs_company = bool(self.companies.by_id)

    @property
    def empty(self) -> bool:
        return not (self.regex or self.needs_user or self.needs_company)

    @classmethod
    def from_stored(cls, rules: Any, config: Any) -> Optional[GovernanceRules]:
        """Compile a snapshot; None when there is no usable rule (the request path then does nothing)."""
        if not rules:
            return None
        try:
            return cls._compile(rules, config)
        except Exception:  # defensive: a shape we did not foresee must not reach a request
            logger.warning("moesifasgi: unusable Moesif governance rules; applying none", exc_info=True)
            return None

    @classmethod
    def _compile(cls, rules: Any, config: Any) -> Optional[GovernanceRules]:
        problems: List[str] = []
        compiled: List[Rule] = []
        if not isinstance(rules, list):
            problems.append("the stored rules are not a list")
        else:
            for raw in rules:
                try:
                    compiled.append(Rule(raw))
                except Malformed as exc:
                    problems.append(str(exc))
        if config is not None and not isinstance(config, Mapping):
            problems.append("the stored config is not an object")
            config = None
        engine = cls(compiled, config, problems) if compiled else None
        if problems:
            logger.warning("moesifasgi: ignoring %d malformed part(s) of the Moesif governance rules: %s",
                           len(problems), "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
        return engine

    def evaluate(self, *, verb: Optional[str], route: Optional[str], ip_address: Optional[str],
                 request_headers: Mapping[str, str], request_body: Any,
                 user_id: Optional[str], company_id: Optional[str]) -> GovernanceDecision:
        """Apply the rules to one request; ``request_headers`` has lowercase names."""
        req = Req(verb, route, ip_address, request_headers, request_body)
        applicable: List[Tuple[Rule, Mapping[str, Any]]] = [(r, _EMPTY) for r in self.regex if r.matches(req)]
        self.companies.applicable(company_id, req, applicable)
        self.users.applicable(user_id, req, applicable)
        decision = GovernanceDecision()
        for rule, values in applicable:
            for name, value in rule.headers.items():
                value = rule.substitute(value, values)
                decision.headers[name] = _UNSAFE_HEADER_CHARS.sub("", value if isinstance(value, str) else str(value))
            if rule.block:
                decision.blocked_by = rule.id
                decision.status = rule.status
                decision.body = rule.substitute(rule.body, values)
        return decision
