"""This package against the bare app, the original `moesifasgi` 1.1.8, apitally and
OpenTelemetry's ASGI middleware, side by side in one run.

    python benchmarks/compare.py            # full run, about 15 minutes
    python benchmarks/compare.py --quick    # a few minutes: uvicorn x1, /hello and /echo, one round
    python benchmarks/compare.py --no-original --modes bare ours otel

Serves `bench_app.py` under uvicorn with `uvicorn[standard]` (uvloop, httptools: as
production runs it; h11 flatters every middleware), 1 worker (and gunicorn with 4 uvicorn
workers in the full run), with each middleware in turn, alternating them within each round:
- ours and the original (from its own venv, `bench-results/original-venv`, created on
  first use by `original_env.py`) with the bench app's SKIP and IDENTIFY_USER callbacks
  and LOG_BODY on, sending to the loopback Moesif stand-in;
- apitally 1.0 capturing request and response headers and bodies, and OpenTelemetry's
  `OpenTelemetryMiddleware` with a `BatchSpanProcessor` and the OTLP/HTTP exporter, both
  exporting to a loopback OTLP sink.
Each sink runs in its own process and stores what it receives undecoded during the load.

Prints req/s, p50/p99 and ratios (medians over rounds), the CPU per request of each
process read from /proc (the worker's main thread, our queue writer thread, the worker's
other threads, the flusher helper), from the start of the measured load until what it
produced was delivered, the peak RSS of a worker and of the helper, and how much
arrived. Then the drain benchmark and the outgoing-call overhead. The report goes to
bench-results/compare-<time>.txt and a chart of it to the same name with .png.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _harness import MODE_LABELS, LoadSpec, Run, measure, require_standard  # noqa: E402
from _servers import ROOT  # noqa: E402

ALL_MODES = ["bare", "ours", "original", "apitally", "otel"]


def machine_info() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def med(runs: List[Run], get) -> float:
    return statistics.median(get(r) for r in runs)


def summary(results: Dict[str, Dict[str, List[Run]]]) -> List[dict]:
    """One row per endpoint and mode, medians over the rounds."""
    rows = []
    for endpoint, by_mode in results.items():
        bare = by_mode["bare"]
        bare_rps = med(bare, lambda r: r.wrk.requests_per_s)
        bare_p99 = med(bare, lambda r: r.wrk.p99_ms)
        bare_worker = med(bare, lambda r: r.worker_us)
        for mode, runs in by_mode.items():
            if not runs:
                continue
            rps = med(runs, lambda r: r.wrk.requests_per_s)
            worker = med(runs, lambda r: r.worker_us)
            rows.append({
                "endpoint": endpoint, "mode": mode, "rps": rps, "ratio": rps / bare_rps,
                "ratios": [r.wrk.requests_per_s / b.wrk.requests_per_s for r, b in zip(runs, bare)],
                "p50": med(runs, lambda r: r.wrk.p50_ms), "p99": med(runs, lambda r: r.wrk.p99_ms),
                "p99_added": med(runs, lambda r: r.wrk.p99_ms) - bare_p99,
                "main": med(runs, lambda r: r.cpu_us["main"]), "writer": med(runs, lambda r: r.cpu_us["writer"]),
                "threads": med(runs, lambda r: r.cpu_us["threads"]), "worker": worker,
                "worker_added": worker - bare_worker, "helper": med(runs, lambda r: r.cpu_us["helper"]),
                "sink": med(runs, lambda r: r.cpu_us["sink"]),
                "worker_rss": max(r.worker_rss_mb for r in runs), "helper_rss": max(r.helper_rss_mb for r in runs),
                "errors": sum(r.wrk.errors for r in runs), "last": runs[-1],
            })
    return rows


def report_config(title: str, rows: List[dict], out) -> None:
    out(f"\n## {title}")
    out(f"{'endpoint':8s} {'mode':9s} {'req/s':>7s} {'/bare':>6s} {'p50':>6s} {'p99':>6s} {'+p99':>6s} "
        f"{'worker':>7s} {'+worker':>7s} {'main':>6s} {'writer':>6s} {'thrds':>6s} {'helper':>6s} {'sink':>6s} "
        f"{'wRSS':>5s} {'hRSS':>5s} {'err':>4s}  delivered")
    for row in rows:
        last: Run = row["last"]
        deliv = "" if row["mode"] == "bare" else (
            f"{last.delivered}/{last.expected}{'' if last.complete else '+'} "
            f"{'spans' if row['mode'] in ('apitally', 'otel') else 'events'}, dup {last.duplicates}, "
            f"last {last.delivery_s:.1f} s after the load")
        out(f"{row['endpoint']:8s} {row['mode']:9s} {row['rps']:7.0f} {row['ratio']:6.1%} {row['p50']:6.2f} "
            f"{row['p99']:6.2f} {row['p99_added']:+6.2f} {row['worker']:7.0f} {row['worker_added']:+7.0f} "
            f"{row['main']:6.0f} {row['writer']:6.0f} {row['threads']:6.0f} {row['helper']:6.0f} {row['sink']:6.0f} "
            f"{row['worker_rss']:5.0f} {row['helper_rss']:5.0f} {row['errors']:4d}  {deliv}")
    by_endpoint: Dict[str, Dict[str, dict]] = {}
    for row in rows:
        by_endpoint.setdefault(row["endpoint"], {})[row["mode"]] = row
    for endpoint, by_mode in by_endpoint.items():
        ours = by_mode.get("ours")
        if ours is None:
            continue
        others = [m for m in by_mode if m not in ("bare", "ours")]
        if others:
            out(f"{endpoint:8s} ours / " + ", ".join(
                f"{m} {ours['rps'] / by_mode[m]['rps']:.2f}x" for m in others)
                + "; ours/bare per round: " + " ".join(f"{x:.1%}" for x in ours["ratios"]))
    out("(req/s, latency in ms: medians over rounds; /bare: ratio of the medians; CPU in µs per request, "
        "from the start of the load until its output was delivered: worker = main + writer (our queue writer thread) "
        "+ thrds (the worker's other threads: the peers' exporters); +worker: above bare's worker; helper: our "
        "flusher helper process; sink: the loopback collector, not part of the app; wRSS/hRSS: peak RSS MB of "
        "one worker / of the helper; delivered: last round, '+' = incomplete when the wait ended)")


def chart(rows_by_config: List[Tuple[str, List[dict]]], path: str, subtitle: str) -> None:
    """Throughput as a share of bare, and the worker's and helper's CPU per request."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_by_config = [(t, rows) for t, rows in rows_by_config if rows]
    fig, axes = plt.subplots(len(rows_by_config), 2, figsize=(13, 4.2 * len(rows_by_config)), squeeze=False)
    colors = {"bare": "#9e9e9e", "ours": "#1b7f3b", "original": "#c0392b", "apitally": "#2e6da4", "otel": "#8e44ad"}
    for (title, rows), (ax_rps, ax_cpu) in zip(rows_by_config, axes):
        endpoints = list(dict.fromkeys(r["endpoint"] for r in rows))
        modes = [m for m in ALL_MODES if any(r["mode"] == m for r in rows)]
        width = 0.8 / len(modes)
        index = {(r["endpoint"], r["mode"]): r for r in rows}
        for i, mode in enumerate(modes):
            xs = [e + (i - (len(modes) - 1) / 2) * width for e in range(len(endpoints))]
            ratios = [index[(ep, mode)]["ratio"] if (ep, mode) in index else 0 for ep in endpoints]
            bars = ax_rps.bar(xs, ratios, width, label=MODE_LABELS[mode], color=colors[mode])
            ax_rps.bar_label(bars, labels=[f"{v:.2f}" for v in ratios], fontsize=7)
            worker = [index[(ep, mode)]["worker"] if (ep, mode) in index else 0 for ep in endpoints]
            helper = [index[(ep, mode)]["helper"] if (ep, mode) in index else 0 for ep in endpoints]
            ax_cpu.bar(xs, worker, width, color=colors[mode], label=MODE_LABELS[mode])
            tops = ax_cpu.bar(xs, helper, width, bottom=worker, color=colors[mode], alpha=0.4, hatch="//")
            ax_cpu.bar_label(tops, labels=[f"{w + h:.0f}" for w, h in zip(worker, helper)], fontsize=7)
        for ax in (ax_rps, ax_cpu):
            ax.set_xticks(range(len(endpoints)))
            ax.set_xticklabels(endpoints)
        ax_rps.axhline(1.0, color="#555", lw=0.8)
        ax_rps.axhline(0.75, color="#1b7f3b", lw=0.8, ls="--")
        ax_rps.set_ylabel("throughput / bare (higher is better)")
        ax_rps.set_title(f"{title}: requests/s relative to the bare app")
        ax_cpu.set_ylabel("CPU µs per request (lower is better)")
        ax_cpu.set_title(f"{title}: worker CPU, + helper process (hatched)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_script(cmd: List[str], out, timeout: float) -> None:
    out("$ " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd[1:]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        text = proc.stdout.strip() or proc.stderr.strip()[-2000:]
    except subprocess.TimeoutExpired:
        text = f"(timed out after {timeout:.0f} s)"
    for line in text.splitlines():
        if " round " in line:  # per-round lines of outgoing_overhead: the tables follow
            continue
        out(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: uvicorn x1, /hello and /echo, 1 round of 3 s, a small drain")
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--endpoints", nargs="*", choices=["/hello", "/json", "/echo", "/stream"])
    parser.add_argument("--modes", nargs="*", choices=ALL_MODES, default=ALL_MODES)
    parser.add_argument("--no-original", action="store_true")
    parser.add_argument("--no-gunicorn", action="store_true", help="only uvicorn with 1 worker")
    parser.add_argument("--no-callbacks", action="store_true", help="ours and the original without SKIP/IDENTIFY_USER")
    parser.add_argument("--no-extras", action="store_true", help="skip the drain and outgoing-call benchmarks")
    parser.add_argument("--original-python", help="python with moesifasgi 1.1.8 (default: bench-results/original-venv)")
    parser.add_argument("--drain-events", type=int)
    parser.add_argument("--chart", help="also write the chart to this path")
    args = parser.parse_args()
    q = args.quick
    args.seconds = args.seconds or (3 if q else 6)
    args.rounds = args.rounds or (1 if q else 3)
    args.endpoints = args.endpoints or (["/hello", "/echo"] if q else ["/hello", "/echo", "/json", "/stream"])
    args.drain_events = args.drain_events or (20_000 if q else 200_000)

    os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
    stem = os.path.join(ROOT, "bench-results", time.strftime("compare-%Y%m%d-%H%M%S"))
    report = open(stem + ".txt", "w")

    def out(line: str = "") -> None:
        print(line, flush=True)
        report.write(line + "\n")

    require_standard(sys.executable)
    modes: Dict[str, str] = {m: sys.executable for m in args.modes if m != "original"}
    if "original" in args.modes and not args.no_original:
        if args.original_python:
            modes["original"] = args.original_python
        else:
            from original_env import original_python
            modes["original"] = original_python()
        require_standard(modes["original"])
    modes = {m: modes[m] for m in ALL_MODES if m in modes}
    if "bare" not in modes:
        raise SystemExit("the bare app is the reference: keep 'bare' in --modes")
    started = time.monotonic()
    out(f"machine: {machine_info()}; load average at start {load_average()}")
    out(f"wrk 1 thread, {args.connections} connections, {args.seconds} s per run (+1 s warm-up), "
        f"{args.rounds} round(s), modes alternate within a round; uvicorn[standard] (uvloop, httptools); "
        f"callbacks (ours, original): {'none' if args.no_callbacks else 'SKIP + IDENTIFY_USER'}, LOG_BODY on; "
        f"flusher: embedded helper process; sinks: loopback, own process")
    configs: List[Tuple[str, str, int]] = [("uvicorn, 1 worker", "uvicorn", 1)]
    if not (q or args.no_gunicorn):
        configs.append(("gunicorn, 4 uvicorn workers", "gunicorn", 4))
    seq = 0
    rows_by_config: List[Tuple[str, List[dict]]] = []
    with tempfile.TemporaryDirectory(prefix="moesif-compare-") as workdir:
        for title, kind, workers in configs:
            results: Dict[str, Dict[str, List[Run]]] = {e: {m: [] for m in modes} for e in args.endpoints}
            for round_no in range(args.rounds):
                for endpoint in args.endpoints:
                    for mode, python in modes.items():
                        seq += 1
                        spec = LoadSpec(endpoint=endpoint, seconds=args.seconds, connections=args.connections,
                                        server=kind, workers=workers, callbacks=not args.no_callbacks,
                                        deliver_timeout=10.0 if q else 30.0)
                        try:
                            r = measure(mode, python, spec, workdir, seq)
                        except RuntimeError as exc:  # the port was taken: once more on another
                            print(f"  {exc}; retrying", flush=True)
                            seq += 1
                            r = measure(mode, python, spec, workdir, seq)
                        results[endpoint][mode].append(r)
                        print(f"  {kind} x{workers} round {round_no + 1} {endpoint:7s} {mode:9s} "
                              f"{r.wrk.requests_per_s:8.0f} req/s p99 {r.wrk.p99_ms:6.2f} ms "
                              f"worker {r.worker_us:5.0f} µs/req helper {r.cpu_us['helper']:4.0f} "
                              f"delivered {r.delivered}/{r.expected} load {load_average()}", flush=True)
            rows = summary(results)
            report_config(title, rows, out)
            rows_by_config.append((title, rows))
    out(f"\nload average at the end {load_average()}")
    subtitle = (f"{machine_info()}; wrk -c{args.connections}, {args.rounds} round(s) of {args.seconds} s, medians; "
                f"uvicorn[standard]; ours/original with SKIP + IDENTIFY_USER, LOG_BODY; {time.strftime('%Y-%m-%d')}")
    try:
        chart(rows_by_config, stem + ".png", subtitle)
        if args.chart:
            chart(rows_by_config, args.chart, subtitle)
        out(f"chart: {os.path.relpath(stem + '.png', ROOT)}" + (f" and {args.chart}" if args.chart else ""))
    except ImportError:
        out("(no chart: pip install matplotlib, or -e '.[bench]')")
    if not args.no_extras:
        out("\n## Drain of a backlog (ours; the original sends at most BATCH_SIZE 100 per second per process)")
        run_script([sys.executable, os.path.join(HERE, "drain_benchmark.py"), "--events", str(args.drain_events)],
                   out, timeout=300)
        outgoing = os.path.join(HERE, "outgoing_overhead.py")
        if os.path.exists(outgoing):
            out("\n## Outgoing-call overhead (ours)")
            extra = ["--calls", "500", "--rounds", "3"] if q else ["--calls", "2000", "--rounds", "3"]
            run_script([sys.executable, outgoing] + extra, out, timeout=300)
    out(f"\ntotal time {time.monotonic() - started:.0f} s; report saved to {os.path.relpath(stem + '.txt', ROOT)}")
    report.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
