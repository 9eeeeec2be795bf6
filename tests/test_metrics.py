"""The metrics of moesif-flush: read from the queue file, never imported by the app."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from moesifasgi_flush.metrics import render
from tests.flush_support import insert_events


def test_the_app_and_the_embedded_helper_never_import_prometheus_client(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from moesifasgi import MoesifMiddleware, writers
        import moesifasgi.delivery.helper  # what the embedded flusher's process runs
        app = FastAPI()

        @app.get("/x")
        def x():
            return {{"ok": True}}

        app.add_middleware(MoesifMiddleware, settings={{"APPLICATION_ID": "a", "FLUSHER": "in-process",
                                                        "QUEUE_PATH": {str(tmp_path / 'q.sqlite')!r}}})
        with TestClient(app) as client:
            assert client.get("/x").status_code == 200
        writers.flush_all()
        print("prometheus_client" in sys.modules, "moesifasgi_flush.metrics" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={"MOESIF_BASE_URI": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_a_scrape_of_an_unusable_file_reports_it_instead_of_failing(tmp_path):
    text = render(str(tmp_path / "missing.sqlite"))
    assert "moesifasgi_queue_up 0.0" in text and "moesifasgi_events_pending" not in text
    assert not (tmp_path / "missing.sqlite").exists()


def test_metrics_follow_the_queue_counters(path):
    insert_events(path, 6)
    text = render(path, "prometheus")
    assert "moesifasgi_events_pending 6.0" in text and "moesifasgi_events_sent_total 0.0" in text
    assert "moesifasgi_lease_held 0.0" in text


def test_every_metric_the_grafana_dashboard_queries_is_exported(path):
    import importlib.util
    import json
    import re
    from pathlib import Path

    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from moesifasgi_flush.metrics import ProcessFigures, QueueCollector

    examples = Path(__file__).resolve().parent.parent / "examples"
    dashboard = json.loads((examples / "grafana-dashboard.json").read_text())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(path, lambda: ProcessFigures(1, "h", True, {})))
    exported = generate_latest(registry).decode()
    spec = importlib.util.spec_from_file_location("render_dashboard", examples / "render_dashboard.py")
    renderer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(renderer)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        for name in re.findall(r"moesifasgi_\w+", expr):
            assert f"\n{name}" in exported or f"# TYPE {name} " in exported, name
        renderer.evaluate(expr, [(0.0, {"moesifasgi_events_pending": 1.0})])  # the picture's renderer reads it
