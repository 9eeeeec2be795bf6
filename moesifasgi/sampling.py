"""Moesif server-side sampling: which share of events to keep, and their weight.

The rate comes from the app config Moesif serves at ``GET /v1/config``::

    {"sample_rate": 50,
     "user_sample_rate": {"user-1": 10},
     "company_sample_rate": {"acme": 0},
     "regex_config": [{"conditions": [{"path": "request.route", "value": "^/health"}],
                       "sample_rate": 5}]}

Precedence, as in Moesif's own middlewares: the first ``regex_config`` entry
whose conditions all match, then the user's rate, then the company's, then
``sample_rate``, then 100. Condition values are regular expressions searched
(``re.search``) in the event's value as text; a condition whose path has no
value in the event, or whose path is unknown, does not match, and an entry
without conditions never matches.

A config is compiled once into a :class:`SamplingConfig`. Malformed parts are
dropped with one warning each (per process): a rate that is not a number, an
entry with a bad regex or a malformed condition (the whole entry is dropped,
since keeping its other conditions would widen what it matches). Rates are
clamped to ``[0, 100]``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Pattern, Tuple

from .conditions import BadCondition, compile_condition
from .diagnostics import ProblemLog

__all__ = ["SamplingConfig", "keep", "weight_for"]

logger = logging.getLogger(__name__)

DEFAULT_RATE = 100.0

_PATHS = ("request.verb", "request.route", "request.ip_address", "response.status")

# Each problem once per process: the config is refetched every few minutes and a
# broken entry should not warn each time. Bounded so it cannot grow forever.
_warned = ProblemLog(logger, interval=None, max_keys=256)


def _warn(problem: str) -> None:
    _warned.report(problem, "ignoring part of the Moesif sampling config: %s", problem)


def _rate(value: Any, where: str) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _warn(f"{where}: sample rate {value!r} is not a number")
        return None
    rate = float(value)
    if math.isnan(rate):
        _warn(f"{where}: sample rate is NaN")
        return None
    if rate < 0.0 or rate > 100.0:
        _warn(f"{where}: sample rate {value!r} clamped to [0, 100]")
        rate = min(max(rate, 0.0), 100.0)
    return rate


def _rate_table(value: Any, where: str) -> Dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _warn(f"{where} is not an object")
        return {}
    table: Dict[str, float] = {}
    for key, raw in value.items():
        rate = _rate(raw, f"{where}[{key!r}]")
        if rate is not None:
            table[str(key)] = rate
    return table


def _rule(entry: Any, where: str) -> Optional[Tuple[Tuple[Tuple[str, Pattern[str]], ...], float]]:
    if not isinstance(entry, Mapping):
        _warn(f"{where} is not an object")
        return None
    rate = _rate(entry.get("sample_rate"), where)
    conditions = entry.get("conditions")
    if rate is None:
        return None
    if not isinstance(conditions, (list, tuple)):
        _warn(f"{where}: conditions is not a list")
        return None
    # Like the original, a repeated path keeps its last value.
    by_path: Dict[str, Pattern[str]] = {}
    for index, condition in enumerate(conditions):
        try:
            path, pattern = compile_condition(condition)
        except BadCondition as exc:
            _warn(f"{where}.conditions[{index}]{': ' if exc.bad_regex else ' '}{exc}")
            return None
        by_path[path] = pattern
    if not by_path:
        return None  # never matches, as in the original
    return tuple(by_path.items()), rate


class SamplingConfig:
    """A Moesif sampling config, validated and with its regexes compiled."""

    __slots__ = ("default_rate", "user_rates", "company_rates", "rules")

    def __init__(
        self,
        default_rate: float = DEFAULT_RATE,
        user_rates: Optional[Mapping[str, float]] = None,
        company_rates: Optional[Mapping[str, float]] = None,
        rules: Tuple[Tuple[Tuple[Tuple[str, Pattern[str]], ...], float], ...] = (),
    ) -> None:
        self.default_rate = default_rate
        self.user_rates = dict(user_rates or {})
        self.company_rates = dict(company_rates or {})
        self.rules = rules

    @classmethod
    def from_dict(cls, config: Optional[Mapping[str, Any]]) -> SamplingConfig:
        """Build from the ``/v1/config`` body; never raises."""
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            _warn("the config is not an object")
            return cls()
        try:
            raw_default = config.get("sample_rate")
            default = DEFAULT_RATE if raw_default is None else _rate(raw_default, "sample_rate")
            raw_rules = config.get("regex_config")
            rules = []
            if isinstance(raw_rules, (list, tuple)):
                for index, entry in enumerate(raw_rules):
                    rule = _rule(entry, f"regex_config[{index}]")
                    if rule is not None:
                        rules.append(rule)
            elif raw_rules is not None:
                _warn("regex_config is not a list")
            return cls(
                DEFAULT_RATE if default is None else default,
                _rate_table(config.get("user_sample_rate"), "user_sample_rate"),
                _rate_table(config.get("company_sample_rate"), "company_sample_rate"),
                tuple(rules),
            )
        except Exception:  # a foreign Mapping misbehaving: sample nothing out
            logger.warning("unusable Moesif sampling config; keeping every event", exc_info=True)
            return cls()

    def rate(
        self,
        *,
        verb: str,
        route: str,
        ip_address: Optional[str],
        status: Optional[int],
        user_id: Optional[str],
        company_id: Optional[str],
    ) -> float:
        """Return the sample rate (0 to 100) that applies to one event."""
        if self.rules:
            values = {
                "request.verb": verb or None,
                # The original matched the URI path, "/" when it had none.
                "request.route": (route.partition("?")[0] or "/") if route is not None else None,
                "request.ip_address": ip_address or None,
                "response.status": str(status) if status else None,
            }
            for conditions, rate in self.rules:
                for path, pattern in conditions:
                    value = values.get(path)
                    if value is None or pattern.search(value) is None:
                        break
                else:
                    return rate
        if user_id and user_id in self.user_rates:
            return self.user_rates[user_id]
        if company_id and company_id in self.company_rates:
            return self.company_rates[company_id]
        return self.default_rate


def weight_for(rate: float) -> int:
    """Return the event weight Moesif expects for a kept event.

    ``floor(100 / rate)``; 1 when the rate is 0 (nothing would be kept),
    100 or more, or not a number.
    """
    if not rate or rate >= 100 or rate < 0 or rate != rate:
        return 1
    return max(1, math.floor(100 / rate))


def keep(rate: float, rand: float) -> bool:
    """Decide whether to keep an event, given ``rand`` drawn from ``[0, 1)``."""
    return rand * 100 < rate
