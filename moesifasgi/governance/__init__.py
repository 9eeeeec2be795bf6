"""Moesif governance rules, in three layers that import only downward.

- :mod:`.rule`: one rule from ``GET /v1/rules``, validated and compiled;
- :mod:`.engine`: all the rules and the config's cohorts, evaluated against one request (pure, no I/O);
- :mod:`.asgi`: the middleware's side, reading what the engine needs from a live ASGI request and
  answering a blocked call.
"""
from __future__ import annotations

from .engine import GovernanceDecision, GovernanceRules

__all__ = ["GovernanceDecision", "GovernanceRules"]
