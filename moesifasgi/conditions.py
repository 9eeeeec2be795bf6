"""One condition of a Moesif rule: ``{"path": ..., "value": <regex>}``, validated and compiled.

Governance rules (``GET /v1/rules``) and sampling rules (``GET /v1/config``)
write their conditions the same way; both compile them here, so the two accept
and refuse the same conditions.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Pattern, Tuple

__all__ = ["BadCondition", "compile_condition"]


class BadCondition(ValueError):
    """A condition that cannot be used; ``str(exc)`` says why, for the caller's warning."""

    def __init__(self, reason: str, *, bad_regex: bool = False) -> None:
        super().__init__(reason)
        self.bad_regex = bad_regex


def compile_condition(condition: Any) -> Tuple[str, Pattern[str]]:
    """Return the condition's path and its compiled regex; BadCondition if unusable."""
    if not isinstance(condition, Mapping):
        raise BadCondition("is not an object")
    path, value = condition.get("path"), condition.get("value")
    if not isinstance(path, str) or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadCondition("needs a text path and a text value")
    try:
        return path, re.compile(str(value))
    except (re.error, RecursionError, OverflowError) as exc:
        raise BadCondition(f"bad regex {value!r} ({exc})", bad_regex=True) from None
