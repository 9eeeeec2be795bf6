"""Draw examples/grafana-dashboard.json's panels from a real run, as a PNG for the README.

This is not Grafana: it reads the dashboard's panels (title, type, grid position,
PromQL targets, legend, unit) and draws them with matplotlib from metrics scraped
off a real `moesif-flush run --metrics-port` once a second, while a real app with
the middleware (FLUSHER "external") takes requests, the loopback Moesif stand-in
answers 503 for a while (an outage: the backlog grows), and then recovers.

It understands only the PromQL shapes the dashboard uses:
`sum|max( NAME{...} )`, `sum|max( rate(NAME{...}[$__rate_interval]) )` and
`sum by (LABEL) (rate(...))`; label selectors are ignored (one instance).

    pip install -e '.[test]' matplotlib
    python examples/render_dashboard.py                 # record ~60 s, then draw
    python examples/render_dashboard.py --samples S.json  # draw from a recording
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
APP_ID = "dashboard-demo"
RATE_WINDOW = 5.0  # $__rate_interval for one-second scrapes
Sample = Tuple[float, Dict[str, float]]  # (seconds since start, {series: value})


# -- recording --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse(text: str) -> Dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


def record(seconds: float, outage: Tuple[float, float]) -> List[Sample]:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from moesifasgi import MoesifMiddleware, queue_writer
    from moesifasgi.testing.local_collector import LocalCollector

    workdir = tempfile.mkdtemp(prefix="moesif-dashboard-")
    queue = os.path.join(workdir, "queue.sqlite")
    port = _free_port()

    async def items(request: Any) -> JSONResponse:
        return JSONResponse({"id": request.path_params["n"], "name": "widget"})

    app = Starlette(routes=[Route("/items/{n}", items)])
    app.add_middleware(MoesifMiddleware, settings={"APPLICATION_ID": APP_ID, "QUEUE_PATH": queue,
                                                   "FLUSHER": "external"})
    samples: List[Sample] = []
    with LocalCollector(application_id=APP_ID, keep_events=False) as collector:
        collector.reject_events_where(lambda e: e.get("request", {}).get("uri", "").endswith("/items/13"))
        env = dict(os.environ, MOESIF_QUEUE_PATH=queue, MOESIF_APPLICATION_ID=APP_ID, MOESIF_BASE_URI=collector.url)
        daemon = subprocess.Popen([sys.executable, "-m", "moesifasgi_flush.cli", "run", "--metrics-port", str(port),
                                   "--batch-wait", "0.5"], env=env, stderr=subprocess.DEVNULL)
        stop = threading.Event()

        def traffic() -> None:
            with TestClient(app) as client:
                n = 0
                while not stop.is_set():
                    client.get(f"/items/{n % 500}")
                    n += 1
                    time.sleep(0.004)
            queue_writer.flush_all()

        worker = threading.Thread(target=traffic)
        try:
            worker.start()
            started = time.monotonic()
            failing = False
            while time.monotonic() - started < seconds:
                t = time.monotonic() - started
                if outage[0] <= t < outage[1] and not failing:
                    collector.fail_for(503, outage[1] - t, {"Retry-After": "2"})
                    failing = True
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        samples.append((t, _parse(r.read().decode())))
                except OSError:
                    pass
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started - t)))
        finally:
            stop.set()
            worker.join()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    return samples


# -- a little PromQL over the samples ----------------------------------------------

_AGG = re.compile(r"^(sum|max)(?: by \((\w+)\))? ?\((.*)\)$")
_RATE = re.compile(r"^rate\((\w+)\{[^}]*\}\[[^\]]+\]\)$")
_NAME = re.compile(r"^(\w+)\{[^}]*\}$")
_LABELS = re.compile(r'(\w+)="([^"]*)"')


def _series_of(samples: List[Sample], name: str) -> Dict[str, List[Tuple[float, float]]]:
    """{label text: [(t, value)]} for every series of metric `name`."""
    out: Dict[str, List[Tuple[float, float]]] = {}
    for t, values in samples:
        for series, value in values.items():
            base = series.split("{", 1)[0]
            if base == name:
                out.setdefault(series[len(base):], []).append((t, value))
    return out


def _rate(points: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    result = []
    for i, (t, v) in enumerate(points):
        j = i
        while j > 0 and t - points[j - 1][0] <= RATE_WINDOW:
            j -= 1
        if j < i and t > points[j][0]:
            result.append((t, max(0.0, v - points[j][1]) / (t - points[j][0])))
    return result


def evaluate(expr: str, samples: List[Sample]) -> Dict[str, List[Tuple[float, float]]]:
    """{group label value or "": points} for one dashboard expression."""
    agg = _AGG.match(expr.strip())
    if not agg:
        raise ValueError(f"expression not understood: {expr}")
    how, by, inner = agg.groups()
    rate = _RATE.match(inner)
    name = rate.group(1) if rate else _NAME.match(inner).group(1)  # type: ignore[union-attr]
    groups: Dict[str, Dict[float, List[float]]] = {}
    for labels, points in _series_of(samples, name).items():
        key = dict(_LABELS.findall(labels)).get(by, "") if by else ""
        for t, v in (_rate(points) if rate else points):
            groups.setdefault(key, {}).setdefault(t, []).append(v)
    fold = sum if how == "sum" else max
    return {k: sorted((t, fold(vs)) for t, vs in g.items()) for k, g in groups.items()}


# -- drawing -----------------------------------------------------------------------

def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"
    if unit == "decbytes":
        for u in ("B", "kB", "MB", "GB"):
            if value < 1000:
                return f"{value:.1f} {u}"
            value /= 1000
    if unit == "ops":
        return f"{value:.1f}/s" if value < 10 else f"{value:.0f}/s"
    return f"{value:,.0f}"


def draw(dashboard: Dict[str, Any], samples: List[Sample], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    unit_h = 0.42
    fig = plt.figure(figsize=(16, rows * unit_h + 0.6), facecolor="#111217")
    fig.text(0.01, 1 - 0.25 / (rows * unit_h + 0.6), dashboard["title"] + "  (drawn by examples/render_dashboard.py "
             "from a real run, not a Grafana screenshot)", color="#d8d9da", fontsize=12, va="center")
    top = 1 - 0.6 / (rows * unit_h + 0.6)
    colors = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#f2495c"]
    height_in = rows * unit_h + 0.6
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        pad = 0.003
        x0, w = g["x"] / 24 + pad, g["w"] / 24 - 2 * pad
        y0, h = top - (g["y"] + g["h"]) / rows * top + pad, g["h"] / rows * top - 2 * pad
        fig.patches.append(matplotlib.patches.Rectangle((x0, y0), w, h, transform=fig.transFigure,
                                                        facecolor="#181b1f", edgecolor="#2c3235", zorder=-1))
        title_h = 0.3 / height_in
        fig.text(x0 + 0.006, y0 + h - title_h / 2, panel["title"], color="#d8d9da", fontsize=9, va="center")
        if panel["type"] == "stat":
            rect = [x0 + 0.004, y0 + 0.004, w - 0.008, h - title_h - 0.006]
        else:
            rect = [x0 + 0.045, y0 + 0.3 / height_in, w - 0.055, h - title_h - 0.4 / height_in]
        ax = fig.add_axes(rect, facecolor="#181b1f")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        if panel["type"] == "stat":
            target = panel["targets"][0]
            points = next(iter(evaluate(target["expr"], samples).values()), [])
            last = points[-1][1] if points else None
            color = "#73bf69"
            for step in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
                if step["value"] is not None and last is not None and last >= step["value"]:
                    color = {"orange": "#ff9830", "red": "#f2495c"}.get(step["color"], color)
            if points:
                ax.fill_between([p[0] for p in points], [p[1] for p in points], color=color, alpha=0.15)
            ax.text(0.5, 0.45, _fmt(last, unit), color=color, fontsize=22, ha="center", va="center",
                    transform=ax.transAxes, weight="bold")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        i = 0
        for target in panel["targets"]:
            for key, points in sorted(evaluate(target["expr"], samples).items()):
                label = re.sub(r"\{\{\s*\w+\s*\}\}", key, target.get("legendFormat", "")) or key
                ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[i % len(colors)],
                        linewidth=1.3, label=label)
                i += 1
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        ax.grid(color="#2c3235", linewidth=0.6)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{int(v) // 60}:{int(v) % 60:02d}"))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _, u=unit: _fmt(v, u)))
        if i:
            ax.legend(loc="upper left", fontsize=7, facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da")
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard", default=os.path.join(HERE, "grafana-dashboard.json"))
    parser.add_argument("--out", default=os.path.join(HERE, "grafana-dashboard.png"))
    parser.add_argument("--samples", help="draw from this recording instead of recording")
    parser.add_argument("--save-samples", help="also write the recording here")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    with open(args.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)
    if args.samples:
        with open(args.samples, encoding="utf-8") as f:
            samples = [(t, v) for t, v in json.load(f)]
    else:
        samples = record(args.seconds, outage=(args.seconds * 0.2, args.seconds * 0.55))
        if args.save_samples:
            with open(args.save_samples, "w", encoding="utf-8") as f:
                json.dump(samples, f)
    draw(dashboard, samples, args.out)
    print(f"{len(samples)} scrapes drawn to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
