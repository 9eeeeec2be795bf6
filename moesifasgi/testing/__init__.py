"""Test servers shipped for the package's users and its own tests: never imported by
the middleware, the queue or the flusher.

:mod:`.local_collector` is a Moesif-compatible collector on loopback that records what
it receives and can be told to misbehave; the demo, the benchmarks and the integration
tests post to it::

    python -m moesifasgi.testing.local_collector --port 0 --record events.jsonl
"""
from __future__ import annotations
