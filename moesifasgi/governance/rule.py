"""One governance rule, compiled: its conditions, its response, its variables.

Used by :mod:`.engine`, which holds the semantics.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Mapping, Optional, Pattern, Tuple

from ..conditions import BadCondition, compile_condition

_UNKNOWN = "UNKNOWN"  # what the original substitutes for a variable without a value
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # a valid HTTP header name

# (kind, key, pattern); kind is one of the Req attribute names or "header"/"body".
_Condition = Tuple[str, Any, Pattern[str]]


class Malformed(ValueError):
    """A rule that cannot be understood; it is dropped from the snapshot."""


def _text(value: Any) -> Optional[str]:
    """A request value as the text a condition's regex searches; None never matches."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _body_field(body: Any, key: str, parts: Tuple[str, ...]) -> Any:
    if not isinstance(body, dict):
        return None
    if key in body:  # the original looked up the literal key only
        return body[key]
    value: Any = body
    for part in parts:  # then "a.b.0" as a path into nested objects and arrays
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


class Rule:
    """A rule from ``GET /v1/rules``, validated, its regexes compiled; Malformed if unusable."""

    __slots__ = ("id", "kind", "block", "not_matching", "unidentified", "groups", "status",
                 "headers", "body", "variables", "needs_body")

    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, Mapping):
            raise Malformed("a rule is not an object")
        rule_id = raw.get("_id")
        if not isinstance(rule_id, str) or not rule_id:
            raise Malformed("a rule has no _id")
        self.id = rule_id
        self.kind = raw.get("type")
        if self.kind not in ("regex", "user", "company"):
            raise Malformed(f"rule {rule_id}: unknown type {self.kind!r}")
        self.block = bool(raw.get("block"))
        self.not_matching = raw.get("applied_to") == "not_matching"
        self.unidentified = bool(raw.get("applied_to_unidentified"))
        self.needs_body = False
        self.groups = self._groups(raw.get("regex_config"))
        self.variables = self._variables(raw.get("variables"))
        response = raw.get("response") or {}
        if not isinstance(response, Mapping):
            raise Malformed(f"rule {rule_id}: response is not an object")
        self.status = None
        if self.block:
            status = response.get("status")
            if isinstance(status, str) and status.strip().isdigit():
                status = int(status)
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise Malformed(f"rule {rule_id}: blocking without a valid response status")
            self.status = status
        headers = response.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise Malformed(f"rule {rule_id}: response.headers is not an object")
        self.headers: Dict[str, Any] = {}
        for name, value in headers.items():
            if not isinstance(name, str) or not _TOKEN.match(name):
                raise Malformed(f"rule {rule_id}: bad header name {name!r}")
            if value is not None:
                self.headers[name.lower()] = value if isinstance(value, str) else _text(value)
        self.body = response.get("body")

    def _groups(self, regex_config: Any) -> Optional[Tuple[Tuple[_Condition, ...], ...]]:
        """None matches every request; an empty tuple matches none (as in the original)."""
        if not regex_config:
            return None
        if not isinstance(regex_config, list):
            raise Malformed(f"rule {self.id}: regex_config is not a list")
        groups = []
        for group in regex_config:
            conditions = group.get("conditions") if isinstance(group, Mapping) else None
            if not isinstance(conditions, list):
                raise Malformed(f"rule {self.id}: a regex_config entry has no conditions list")
            if conditions:  # a group without conditions never matches: leave it out
                groups.append(tuple(self._condition(c) for c in conditions))
        return tuple(groups)

    def _condition(self, condition: Any) -> _Condition:
        try:
            path, pattern = compile_condition(condition)
        except BadCondition as exc:
            what = str(exc) if exc.bad_regex else f"a condition {exc}"
            raise Malformed(f"rule {self.id}: {what}") from None
        if path.startswith("request.headers."):
            return ("header", path[len("request.headers."):].lower(), pattern)
        if path.startswith("request.body."):
            self.needs_body = True
            key = path[len("request.body."):]
            return ("body", (key, tuple(key.split("."))), pattern)
        kind = {"request.verb": "verb", "request.route": "route", "request.ip_address": "ip",
                "request.ip": "ip"}.get(path, "none")  # unknown paths have no value: no match
        return (kind, None, pattern)

    def _variables(self, variables: Any) -> Tuple[str, ...]:
        if not variables:
            return ()
        if not isinstance(variables, list):
            raise Malformed(f"rule {self.id}: variables is not a list")
        names = []
        for variable in variables:
            name = variable.get("name") if isinstance(variable, Mapping) else None
            if not isinstance(name, str) or not name:
                raise Malformed(f"rule {self.id}: a variable has no name")
            names.append(name)
        return tuple(names)

    def matches(self, req: "Req") -> bool:
        groups = self.groups
        if groups is None:
            return True
        for conditions in groups:
            for kind, key, pattern in conditions:
                if kind == "header":
                    value = req.headers.get(key)
                elif kind == "body":
                    value = _text(_body_field(req.body, key[0], key[1]))
                else:
                    value = getattr(req, kind)
                if value is None or pattern.search(value) is None:
                    break
            else:
                return True
        return False

    def substitute(self, template: Any, values: Mapping[str, Any]) -> Any:
        """Replace ``{{name}}`` for each declared variable, in strings, objects and arrays."""
        if not self.variables or not template:
            return template
        if isinstance(template, str):
            if "{{" not in template:
                return template
            for name in self.variables:
                value = values.get(name, _UNKNOWN)
                template = template.replace("{{" + name + "}}", value if isinstance(value, str) else str(value))
            return template
        if isinstance(template, dict):
            return {k: self.substitute(v, values) for k, v in template.items()}
        if isinstance(template, list):
            return [self.substitute(v, values) for v in template]
        return template


class Req:
    """The request values conditions look at (empty values never match)."""

    __slots__ = ("verb", "route", "ip", "none", "headers", "body")

    def __init__(self, verb: Any, route: Any, ip: Any, headers: Mapping[str, str], body: Any) -> None:
        self.verb, self.route, self.ip, self.none = verb or None, route or None, ip or None, None
        self.headers, self.body = headers, body
