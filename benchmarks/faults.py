"""Fault injection: real processes, real signals, a real loopback Moesif stand-in.

    python benchmarks/faults.py                       # every scenario, ours only
    python benchmarks/faults.py --short               # the CI form (seconds, not minutes)
    python benchmarks/faults.py --original-python auto --scenarios 1 2 4

The app (`bench_app.py`) runs under gunicorn with uvicorn workers; a Python load
generator sends calls with their own `X-Moesif-Transaction-Id` and records the id
of every 2xx response it received; the collector (`LocalCollector`, a thread
server in this process, so that it can fail on command) records what arrives.
For each scenario: lost = ids whose response the client received but whose event
never reached Moesif; duplicated = events received more than once.

Scenarios: 1 graceful SIGTERM of every worker under load (gunicorn restarts them);
2 kill -9 of one worker under load, DURABILITY strict and batched (default);
3 kill -9 of the flusher leader while a post is in flight; 4 Moesif answers 503,
then 429 with Retry-After, then recovers; 5 EVENT_QUEUE_SIZE small while Moesif is
down; 6 the queue directory removed, then made unusable, while serving.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _events import count_ids  # noqa: E402
from _loadgen import LoadGenerator  # noqa: E402
from _servers import AppServer  # noqa: E402

from moesifasgi_flush.local_collector import LocalCollector  # noqa: E402


@dataclass
class Durations:
    load: float = 10.0          # seconds of load per scenario
    outage: float = 60.0        # scenario 4: seconds of 503
    throttle: float = 10.0      # scenario 4: seconds of 429 after that
    deliver_timeout: float = 60.0  # how long to wait for delivery after the load
    quiet: float = 5.0          # the original: stop waiting after this long without new events
    workers: int = 2
    concurrency: int = 8
    cap: int = 300              # scenario 5: EVENT_QUEUE_SIZE

    @classmethod
    def short(cls) -> "Durations":
        return cls(load=3.0, outage=3.0, throttle=2.0, deliver_timeout=30.0, quiet=3.0, cap=150)


@dataclass
class Target:
    name: str     # "ours" or "original"
    python: str

    @property
    def mode(self) -> str:
        return self.name


@dataclass
class Outcome:
    scenario: str
    target: str
    ok: int                 # 2xx responses the load generator received
    delivered: int          # of those, distinct events Moesif received
    duplicates: int
    no_response: int        # calls that got no response (connection reset during a restart)
    non_2xx: int
    delivery_s: float       # from the end of the load (or of the outage) to the last event
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.ok - self.delivered

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"{self.scenario:36s} {self.target:9s} ok={self.ok:<6d} delivered={self.delivered:<6d} "
                f"lost={self.lost:<5d} dup={self.duplicates:<4d} no_resp={self.no_response:<3d} "
                f"non2xx={self.non_2xx:<3d} delivery={self.delivery_s:5.1f}s {extra}")


class Stage:
    """One scenario's world: a temporary queue dir, the collector, the app server."""

    def __init__(self, target: Target, d: Durations, env: Optional[Dict[str, str]] = None,
                 base_uri: Optional[str] = None) -> None:
        self.target, self.d = target, d
        self.tmp = tempfile.mkdtemp(prefix="moesif-faults-")
        self.queue_dir = os.path.join(self.tmp, "queue")
        os.makedirs(self.queue_dir)
        self.queue = os.path.join(self.queue_dir, "q.sqlite")
        self.log_path = os.path.join(self.tmp, "server.log")
        self.collector = LocalCollector().start()
        # MOESIF_FLUSHER explicit: the test suite sets "external" for its own in-process apps.
        full_env = {"MOESIF_BASE_URI": base_uri or self.collector.url, "MOESIF_QUEUE_PATH": self.queue,
                    "MOESIF_FLUSHER": "embedded"}
        full_env.update(env or {})
        self.server = AppServer(target.python, target.mode, full_env, workers=d.workers, server="gunicorn",
                                log_path=self.log_path)
        self._wait_workers()

    def _wait_workers(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.server.worker_pids()) < self.d.workers and time.monotonic() < deadline:
            time.sleep(0.1)

    def load(self) -> LoadGenerator:
        return LoadGenerator(self.server.url, concurrency=self.d.concurrency)

    def received(self) -> tuple:
        return count_ids(list(self.collector.events))

    def status(self) -> Dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "moesifasgi_flush.cli", "--queue", self.queue, "status", "--json"],
                             capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-200:]}

    def wait_delivered(self, ids: List[str], since: float, timeout: Optional[float] = None) -> float:
        """Wait until every id arrived (ours), or until nothing new came for `quiet`
        seconds (the original, which never re-sends); the seconds from `since` to the last event."""
        wanted = set(ids)
        deadline = time.monotonic() + (timeout or self.d.deliver_timeout)
        last_count, last_change, last_event_at = -1, time.monotonic(), since
        while time.monotonic() < deadline:
            count = self.collector.event_count
            if count != last_count:
                last_count, last_change, last_event_at = count, time.monotonic(), time.monotonic()
                if wanted <= self.received()[0]:
                    break
            elif self.target.name != "ours" and time.monotonic() - last_change > self.d.quiet:
                break
            time.sleep(0.2)
        return max(0.0, last_event_at - since)

    def outcome(self, scenario: str, gen: LoadGenerator, delivery_s: float, **extra: Any) -> Outcome:
        seen, dups = self.received()
        ok = set(gen.ok_ids)
        return Outcome(scenario, self.target.name, len(ok), len(ok & seen), dups, gen.failures, gen.non_2xx,
                       delivery_s, extra)

    def log_messages(self, *prefixes: str) -> int:
        """Log messages (lines starting with one of `prefixes`; traceback lines are not counted)."""
        with open(self.log_path, errors="replace") as f:
            return sum(1 for line in f if line.startswith(prefixes))

    def close(self) -> None:
        self.server.stop()
        self.collector.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _signal_workers(stage: Stage, sig: int, pids: List[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def scenario_graceful_restart(target: Target, d: Durations) -> List[Outcome]:
    """1. SIGTERM to every worker mid-load; gunicorn starts new ones; load goes on."""
    stage = Stage(target, d)
    try:
        gen = stage.load().start()
        time.sleep(d.load / 2)
        old = stage.server.worker_pids()
        _signal_workers(stage, signal.SIGTERM, old)
        time.sleep(d.load / 2)
        gen.stop()
        ended = time.monotonic()
        respawned = len(set(stage.server.worker_pids()) - set(old))
        delivery = stage.wait_delivered(gen.ok_ids, ended)
        return [stage.outcome("1 graceful restart", gen, delivery, respawned=respawned)]
    finally:
        stage.close()


def _kill_one_worker(target: Target, d: Durations, durability: Optional[str]) -> Outcome:
    env = {"MOESIF_DURABILITY": durability} if durability else {}
    stage = Stage(target, d, env)
    try:
        gen = stage.load().start()
        time.sleep(d.load / 2)
        workers = stage.server.worker_pids()
        victim = workers[0]
        if target.name == "ours":  # a worker that is not the leader: scenario 3 is the leader's
            leader = (stage.status().get("leader") or {}).get("pid")
            victim = next((p for p in workers if p != leader), victim)
        os.kill(victim, signal.SIGKILL)
        time.sleep(d.load / 2)
        gen.stop()
        ended = time.monotonic()
        delivery = stage.wait_delivered(gen.ok_ids, ended)
        label = "2 kill -9 worker" + (f" ({durability})" if durability else "")
        return stage.outcome(label, gen, delivery)
    finally:
        stage.close()


def scenario_kill_worker(target: Target, d: Durations) -> List[Outcome]:
    """2. kill -9 of one (non-leader) worker mid-load: strict, then the default (batched)."""
    if target.name == "ours":
        return [_kill_one_worker(target, d, "strict"), _kill_one_worker(target, d, "batched")]
    return [_kill_one_worker(target, d, None)]


def scenario_kill_leader(target: Target, d: Durations) -> List[Outcome]:
    """3. kill -9 of the leader while the collector holds its post open.

    With the default FLUSHER "embedded" the leader is the helper process a worker
    started, not a serving worker, so the default durability is used: what is
    measured is the flusher's in-flight batch and its replacement by a new helper."""
    stage = Stage(target, d)
    try:
        gen = stage.load().start()
        time.sleep(d.load / 2)
        leader = (stage.status().get("leader") or {}).get("pid")
        stage.collector.delay(1.0)      # posts now hang for a second: one is in flight
        time.sleep(0.5)
        requests_before = stage.collector.requests
        if leader:
            os.kill(leader, signal.SIGKILL)
        time.sleep(0.6)
        stage.collector.delay(0)
        time.sleep(d.load / 2)
        gen.stop()
        ended = time.monotonic()
        delivery = stage.wait_delivered(gen.ok_ids, ended, d.deliver_timeout + 15)
        new_leader = (stage.status().get("leader") or {}).get("pid")
        return [stage.outcome("3 kill -9 leader mid-post", gen, delivery, killed=leader, new_leader=new_leader,
                              posts_before_kill=requests_before)]
    finally:
        stage.close()


def scenario_outage(target: Target, d: Durations) -> List[Outcome]:
    """4. 503 for `outage` s, then 429 + Retry-After for `throttle` s, then recovery."""
    stage = Stage(target, d)
    try:
        stage.collector.fail_for(503, d.outage)
        gen = stage.load().start()
        time.sleep(min(d.load, d.outage))
        gen.stop()
        time.sleep(max(0.0, d.outage - d.load))
        stage.collector.fail_for(429, d.throttle, {"Retry-After": "2"})
        time.sleep(d.throttle)
        recovered = time.monotonic()
        backlog = stage.status().get("pending") if target.name == "ours" else None
        delivery = stage.wait_delivered(gen.ok_ids, recovered, d.deliver_timeout + 60)
        rejected = sum(1 for _m, _p, status, _n in stage.collector.request_log if status in (429, 503))
        return [stage.outcome("4 503 then 429 then ok", gen, delivery, backlog_at_recovery=backlog,
                              rejected_posts=rejected)]
    finally:
        stage.close()


def _pct(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def scenario_queue_cap(target: Target, d: Durations) -> List[Outcome]:
    """5. EVENT_QUEUE_SIZE small while Moesif is down: pending <= cap, drops exact, latency kept."""
    stage = Stage(target, d, {"MOESIF_EVENT_QUEUE_SIZE": str(d.cap)})
    try:
        stage.collector.fail_for(503, 3600)
        gen = stage.load().start()
        max_pending, capped_at = 0, None
        deadline = time.monotonic() + max(d.load, 3.0)
        while time.monotonic() < deadline:
            pending = stage.status().get("pending", 0)
            max_pending = max(max_pending, pending)
            if capped_at is None and pending >= d.cap:
                capped_at = time.perf_counter()
            time.sleep(0.2)
        gen.stop()
        time.sleep(1.0)  # the last group commits
        st = stage.status()
        max_pending = max(max_pending, st.get("pending", 0))
        before = [l for l, t in zip(gen.latencies_ms, gen.ended) if capped_at is None or t < capped_at]
        after = [l for l, t in zip(gen.latencies_ms, gen.ended) if capped_at is not None and t >= capped_at]
        out = stage.outcome("5 queue cap, Moesif down", gen, 0.0, cap=d.cap, max_pending=max_pending,
                            pending=st.get("pending"), dropped=st.get("dropped"),
                            exact=(st.get("pending", 0) + st.get("dropped", 0) == gen.ok),
                            p50_before_ms=round(_pct(before, 0.5), 2), p50_capped_ms=round(_pct(after, 0.5), 2),
                            p99_before_ms=round(_pct(before, 0.99), 2), p99_capped_ms=round(_pct(after, 0.99), 2))
        return [out]
    finally:
        stage.close()


def scenario_disk_trouble(target: Target, d: Durations) -> List[Outcome]:
    """6. The queue directory removed mid-load, later replaced by a plain file
    (unusable path; we run as root, so chmod would not stop us), then restored."""
    stage = Stage(target, d)
    try:
        gen = stage.load().start()
        time.sleep(d.load / 3)
        ok_before_removal = gen.ok
        shutil.rmtree(stage.queue_dir)
        time.sleep(d.load / 3)
        recreated = os.path.exists(stage.queue)
        shutil.rmtree(stage.queue_dir, ignore_errors=True)
        with open(stage.queue_dir, "w") as f:  # now the directory cannot be created
            f.write("not a directory\n")
        time.sleep(d.load / 3)
        os.unlink(stage.queue_dir)  # the operator repairs it
        time.sleep(1.0)
        gen.stop()
        ended = time.monotonic()
        delivery = stage.wait_delivered(gen.ok_ids, ended, min(d.deliver_timeout, 15))
        status = stage.status()
        # The workers' logging is not configured (Python's last-resort handler
        # prints the bare message); the helper prefixes its own lines.
        errors = stage.log_messages("moesifasgi", "moesif-flush helper", "ERROR", "WARNING", "Traceback")
        return [stage.outcome("6 queue dir removed/unusable", gen, delivery, ok_before_removal=ok_before_removal,
                              recreated=recreated, dropped_after=status.get("dropped"), log_messages=errors)]
    finally:
        stage.close()


SCENARIOS: Dict[str, Callable[[Target, Durations], List[Outcome]]] = {
    "1": scenario_graceful_restart,
    "2": scenario_kill_worker,
    "3": scenario_kill_leader,
    "4": scenario_outage,
    "5": scenario_queue_cap,
    "6": scenario_disk_trouble,
}
ORIGINAL_SCENARIOS = ("1", "2", "4")


def run(scenarios: List[str], targets: List[Target], d: Durations, echo: bool = True) -> List[Outcome]:
    results: List[Outcome] = []
    for key in scenarios:
        for target in targets:
            if target.name == "original" and key not in ORIGINAL_SCENARIOS:
                continue
            for outcome in SCENARIOS[key](target, d):
                results.append(outcome)
                if echo:
                    print(outcome.line(), flush=True)
    return results


def table(results: List[Outcome]) -> str:
    rows = ["| Scenario | Package | 2xx received by client | Events delivered | Lost | Duplicated |",
            "|---|---|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r.scenario} | {r.target} | {r.ok} | {r.delivered} | {r.lost} | {r.duplicates} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the CI form: seconds per scenario")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--original-python", help="python with moesifasgi 1.1.8, or 'auto' to create "
                                                  "bench-results/original-venv; runs scenarios 1, 2, 4 on it")
    parser.add_argument("--load-seconds", type=float)
    parser.add_argument("--outage-seconds", type=float, help="scenario 4: seconds of 503 (default 60)")
    parser.add_argument("--throttle-seconds", type=float, help="scenario 4: seconds of 429 (default 10)")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()
    d = Durations.short() if args.short else Durations()
    for name, attr in (("load_seconds", "load"), ("outage_seconds", "outage"),
                       ("throttle_seconds", "throttle"), ("workers", "workers")):
        if getattr(args, name) is not None:
            setattr(d, attr, getattr(args, name))
    targets = [Target("ours", sys.executable)]
    if args.original_python:
        python = args.original_python
        if python == "auto":
            from original_env import original_python
            python = original_python()
        targets.append(Target("original", python))
    print(f"gunicorn, {d.workers} uvicorn workers, {d.concurrency} concurrent clients, load {d.load:g} s, "
          f"outage 503 {d.outage:g} s + 429 {d.throttle:g} s, cap {d.cap}", flush=True)
    results = run(args.scenarios, targets, d)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
