"""The README's one-command demo runs end to end (so it cannot rot)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_demo_delivers_every_event_from_two_workers_and_exits_zero():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOESIF_")}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "demo.py")],
        capture_output=True, text=True, timeout=400, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the collector received 120 distinct events (0 duplicates)" in result.stdout
    assert '"card_number": "****"' in result.stdout  # masked before it left the app
    assert "4111111111111111" not in result.stdout
