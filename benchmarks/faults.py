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

from moesifasgi.testing.local_collector import LocalCollector  # noqa: E402


@dataclass
class Durations:
    """How much each scenario does. Phases end on counted events (2xx responses
    received, posts answered, a leader seen), never on the clock alone: `load`
    and `outage` are minimums on top, so that the full run keeps its length, and
    `phase_timeout` is how long a phase may take to count its events on a slow
    machine before the scenario goes on and its checks fail."""
    load: float = 10.0          # minimum seconds of load per scenario (split over its phases)
    calls: int = 1000           # minimum 2xx responses per scenario (split over its phases)
    outage: float = 60.0        # scenario 4: minimum seconds of 503
    throttle: float = 10.0      # scenario 4: minimum seconds of 429 after that
    deliver_timeout: float = 60.0  # how long to wait for delivery after the load
    quiet: float = 5.0          # the original: stop waiting after this long without new events
    workers: int = 2
    concurrency: int = 8
    cap: int = 300              # scenario 5: EVENT_QUEUE_SIZE
    phase_timeout: float = 120.0
    # Scenario 3: the helper's lease and the workers' check interval, when not the
    # defaults (10 s, 3 s); the test suite shortens them so that the killed leader
    # is replaced in seconds (internal knobs of helper_supervisor.py).
    lease: Optional[float] = None
    helper_check: Optional[float] = None

    @classmethod
    def short(cls) -> "Durations":
        return cls(load=3.0, calls=300, outage=3.0, throttle=2.0, deliver_timeout=60.0, quiet=3.0, cap=150)


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
    diagnostics: str = ""   # for a failed check: what the files and the log looked like at the end

    @property
    def lost(self) -> int:
        return self.ok - self.delivered

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"{self.scenario:36s} {self.target:9s} ok={self.ok:<6d} delivered={self.delivered:<6d} "
                f"lost={self.lost:<5d} dup={self.duplicates:<4d} no_resp={self.no_response:<3d} "
                f"non2xx={self.non_2xx:<3d} delivery={self.delivery_s:5.1f}s {extra}")


def poll(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """True as soon as `condition()` holds; False if it still does not after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Stage:
    """One scenario's world: a temporary queue dir, the collector, the app server
    with every worker answering."""

    def __init__(self, target: Target, d: Durations, env: Optional[Dict[str, str]] = None,
                 base_uri: Optional[str] = None) -> None:
        self.target, self.d = target, d
        self.stalled: List[str] = []  # phases that did not count their events in time
        # Every load generator of this stage, stopped by close() whatever happened:
        # one left running after a failed scenario would go on calling through httpx,
        # which outgoing capture (patched process-wide in the test suite) then records.
        self._loads: List[LoadGenerator] = []
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
        try:
            # Returns once every worker has answered a request (see _servers.py).
            self.server = AppServer(target.python, target.mode, full_env, workers=d.workers, server="gunicorn",
                                    log_path=self.log_path)
        except BaseException:
            self.collector.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def load(self) -> LoadGenerator:
        # A call counts as unanswered only after a minute: on a machine shared with
        # other work a slow answer is not a missing one.
        gen = LoadGenerator(self.server.url, concurrency=self.d.concurrency, timeout=60.0)
        self._loads.append(gen)
        return gen

    def keep_loading(self, gen: LoadGenerator, name: str, calls: int, seconds: float,
                     until: Optional[Callable[[], Any]] = None) -> bool:
        """Let the load run until `gen` counted `calls` more 2xx responses, at least
        `seconds` passed and `until()` holds (checked only once the rest does, it may
        be slow); a phase that has not after `phase_timeout` is noted as stalled."""
        target, started = gen.ok + calls, time.monotonic()
        done = poll(lambda: gen.ok >= target and time.monotonic() - started >= seconds
                    and (until is None or until()), self.d.phase_timeout, 0.05 if until is None else 0.2)
        if not done:
            self.stalled.append(name)
        return done

    def wait_for(self, name: str, condition: Callable[[], Any], interval: float = 0.05) -> bool:
        """Poll `condition` up to `phase_timeout`; noted as stalled if it never held."""
        done = poll(condition, self.d.phase_timeout, interval)
        if not done:
            self.stalled.append(name)
        return done

    def received(self) -> tuple:
        return count_ids(list(self.collector.events))

    def status(self) -> Dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "moesifasgi_flush.cli", "--queue", self.queue, "status", "--json"],
                             capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-200:]}

    def leader(self) -> Optional[int]:
        return (self.status().get("leader") or {}).get("pid")

    def posts_answered(self, *statuses: int) -> int:
        """Event posts the collector answered with one of `statuses`."""
        return sum(1 for _m, path, status, _n in list(self.collector.request_log)
                   if status in statuses and path.startswith("/v1/events"))

    def queue_drained(self) -> bool:
        """Ours: nothing is left in the queue file to post (no event pending, no batch
        claimed by a live or dead flusher)."""
        st = self.status()
        return st.get("pending") == 0 and st.get("in_flight") == 0

    def wait_delivered(self, ids: List[str], since: float, timeout: Optional[float] = None) -> float:
        """Wait until every id arrived, or until no more can arrive: for ours, the
        queue file stayed drained for `quiet` seconds with no new event (an id still
        missing then was never committed, e.g. by a worker killed inside its commit
        window, and waiting out the deadline would not bring it); for the original,
        which never re-sends, nothing new for `quiet` seconds. The seconds from
        `since` to the last event."""
        wanted = set(ids)
        deadline = time.monotonic() + (timeout or self.d.deliver_timeout)
        last_count, last_change, last_event_at = -1, time.monotonic(), since
        drained_since: Optional[float] = None
        while time.monotonic() < deadline:
            count = self.collector.event_count
            if count != last_count:
                last_count, last_change, last_event_at = count, time.monotonic(), time.monotonic()
                drained_since = None
                if wanted <= self.received()[0]:
                    break
            elif self.target.name != "ours":
                if time.monotonic() - last_change > self.d.quiet:
                    break
            elif not os.path.exists(self.queue) or not self.queue_drained():
                drained_since = None
            elif self.collector.event_count != last_count:
                continue  # an event came while the status was read: look again
            elif drained_since is None:
                drained_since = time.monotonic()
            elif time.monotonic() - drained_since >= self.d.quiet:
                break
            time.sleep(0.2)
        return max(0.0, last_event_at - since)

    def outcome(self, scenario: str, gen: LoadGenerator, delivery_s: float, **extra: Any) -> Outcome:
        seen, dups = self.received()
        ok = set(gen.ok_ids)
        if self.stalled:
            extra["stalled"] = ",".join(self.stalled)
        if self.target.name == "ours" and len(ok - seen) > 0 and os.path.exists(self.queue):
            # Lost, or still queued (no flusher drained it)? Only a status tells.
            st = self.status()
            extra["left_in_queue"] = f"{st.get('pending')}+{st.get('in_flight')}"
            extra["leader_at_end"] = (st.get("leader") or {}).get("pid")
        return Outcome(scenario, self.target.name, len(ok), len(ok & seen), dups, gen.failures, gen.non_2xx,
                       delivery_s, extra)

    def log_messages(self, *prefixes: str) -> int:
        """Log messages (lines starting with one of `prefixes`; traceback lines are not counted)."""
        with open(self.log_path, errors="replace") as f:
            return sum(1 for line in f if line.startswith(prefixes))

    def diagnostics(self, log_lines: int = 60) -> str:
        """The queue directory's files (size, inode) and the end of the servers' log."""
        lines = ["files:"]
        for root, _, names in os.walk(self.tmp):
            for name in sorted(names):
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                lines.append(f"  {os.path.relpath(path, self.tmp)} {st.st_size} bytes inode {st.st_ino}")
        with open(self.log_path, errors="replace") as f:
            lines += ["log (end):"] + ["  " + line.rstrip() for line in f.readlines()[-log_lines:]]
        return "\n".join(lines)

    def close(self) -> None:
        for gen in self._loads:
            gen.stop()
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
        stage.keep_loading(gen, "before", d.calls // 2, d.load / 2)
        old = stage.server.worker_pids()
        _signal_workers(stage, signal.SIGTERM, old)
        # Every replacement answers before the second half is counted: the calls
        # it serves are the ones a restart could lose.
        try:
            respawned = len(stage.server.wait_ready(replacing=old, timeout=d.phase_timeout))
        except RuntimeError:
            respawned = 0
            stage.stalled.append("respawn")
        stage.keep_loading(gen, "after", d.calls // 2, d.load / 2)
        gen.stop()
        ended = time.monotonic()
        delivery = stage.wait_delivered(gen.ok_ids, ended)
        return [stage.outcome("1 graceful restart", gen, delivery, respawned=respawned)]
    finally:
        stage.close()


def _kill_one_worker(target: Target, d: Durations, durability: Optional[str]) -> Outcome:
    env = {"MOESIF_DURABILITY": durability} if durability else {}
    stage = Stage(target, d, env)
    try:
        gen = stage.load().start()
        stage.keep_loading(gen, "before", d.calls // 2, d.load / 2)
        workers = stage.server.worker_pids()
        victim = workers[0]
        if target.name == "ours":  # a worker that is not the leader: scenario 3 is the leader's
            leader = stage.leader()
            victim = next((p for p in workers if p != leader), victim)
        os.kill(victim, signal.SIGKILL)
        stage.keep_loading(gen, "after", d.calls // 2, d.load / 2)
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
    env: Dict[str, str] = {}
    if d.lease is not None:
        env["_MOESIF_HELPER_LEASE_SECONDS"] = repr(d.lease)
    if d.helper_check is not None:
        env["_MOESIF_HELPER_CHECK_INTERVAL"] = repr(d.helper_check)
    stage = Stage(target, d, env)
    try:
        gen = stage.load().start()
        found: Dict[str, Optional[int]] = {"leader": None}

        def leader_known() -> bool:
            found["leader"] = stage.leader()
            return found["leader"] is not None

        stage.keep_loading(gen, "before", d.calls // 2, d.load / 2, until=leader_known)
        leader = found["leader"]
        stage.collector.delay(1.0)      # posts now hang for a second
        # A claimed batch while posts hang is a post in flight (status reads the claims).
        stage.wait_for("post in flight", lambda: stage.status().get("in_flight", 0) > 0, interval=0.1)
        requests_before = stage.collector.requests
        if leader:
            os.kill(leader, signal.SIGKILL)
        stage.collector.delay(0)        # the hung post still answers into a dead socket
        new: Dict[str, Optional[int]] = {"leader": None}

        def new_leader() -> bool:
            new["leader"] = stage.leader()
            return new["leader"] not in (None, leader)

        # The killed leader's lease must expire before a new helper takes over.
        stage.keep_loading(gen, "after", d.calls // 2, d.load / 2, until=new_leader)
        gen.stop()
        ended = time.monotonic()
        delivery = stage.wait_delivered(gen.ok_ids, ended, d.deliver_timeout + 15)
        return [stage.outcome("3 kill -9 leader mid-post", gen, delivery, killed=leader, new_leader=new["leader"],
                              posts_before_kill=requests_before)]
    finally:
        stage.close()


def scenario_outage(target: Target, d: Durations) -> List[Outcome]:
    """4. 503 for at least `outage` s, then 429 + Retry-After for at least
    `throttle` s, then recovery; each fault lasts until the flusher has met it."""
    stage = Stage(target, d)
    try:
        started = time.monotonic()
        stage.collector.fail_for(503, 24 * 3600)
        gen = stage.load().start()
        stage.keep_loading(gen, "load", d.calls, min(d.load, d.outage))
        gen.stop()
        stage.wait_for("503 met", lambda: stage.posts_answered(503) > 0
                       and time.monotonic() - started >= d.outage)
        throttled_at = time.monotonic()
        stage.collector.fail_for(429, 24 * 3600, {"Retry-After": "2"})
        stage.wait_for("429 met", lambda: stage.posts_answered(429) > 0
                       and time.monotonic() - throttled_at >= d.throttle)
        stage.collector.reset_faults()
        recovered = time.monotonic()
        backlog = stage.status().get("pending") if target.name == "ours" else None
        delivery = stage.wait_delivered(gen.ok_ids, recovered, d.deliver_timeout + 60)
        return [stage.outcome("4 503 then 429 then ok", gen, delivery, backlog_at_recovery=backlog,
                              rejected_posts=stage.posts_answered(429, 503),
                              throttled_posts=stage.posts_answered(429))]
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
        stage.collector.fail_for(503, 24 * 3600)
        gen = stage.load().start()
        seen: Dict[str, Any] = {"max_pending": 0, "capped_at": None}

        def capped() -> bool:
            pending = stage.status().get("pending", 0)
            seen["max_pending"] = max(seen["max_pending"], pending)
            if seen["capped_at"] is None and pending >= d.cap:
                seen["capped_at"] = time.perf_counter()
            return seen["capped_at"] is not None

        # Pending is watched all along, not only once the calls are counted: the
        # load goes on until the cap was met and twice as many calls were answered.
        target, started = max(d.calls, 2 * d.cap), time.monotonic()
        stage.wait_for("load", lambda: capped() and gen.ok >= target and time.monotonic() - started >= d.load,
                       interval=0.2)
        gen.stop()
        # Every answered call is either pending or a counted drop once the last
        # groups commit.
        st: Dict[str, Any] = {}

        def settled() -> bool:
            st.update(stage.status())
            return st.get("pending", 0) + st.get("dropped", 0) >= gen.ok

        stage.wait_for("committed", settled, interval=0.2)
        max_pending = max(seen["max_pending"], st.get("pending", 0))
        capped_at = seen["capped_at"]
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


def _remove_tree(path: str) -> None:
    """rm -rf of a directory the workers write into: a writer that notices the
    removal recreates its queue file at once, sometimes between rmtree's listing
    and its rmdir ("Directory not empty"), so remove again until it is gone."""
    for _ in range(100):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
    raise OSError(f"{path} kept coming back while it was being removed")


def _replace_tree_with_file(path: str) -> None:
    """Put a plain file where the directory `path` was. A writer may recreate
    the directory between a removal and an open(), so the file is made beside
    it and renamed into place, which fails while a directory is there; remove
    and rename again until the rename wins."""
    spare = f"{path}.file"
    with open(spare, "w") as f:
        f.write("not a directory\n")
    for _ in range(100):
        _remove_tree(path)
        try:
            os.rename(spare, path)
            return
        except IsADirectoryError:  # rename(2)'s EISDIR: the directory is back
            continue
    raise OSError(f"{path} kept coming back as a directory")


def scenario_disk_trouble(target: Target, d: Durations) -> List[Outcome]:
    """6. The queue directory removed mid-load, later replaced by a plain file
    (unusable path; we run as root, so chmod would not stop us), then restored."""
    stage = Stage(target, d)
    try:
        gen = stage.load().start()
        third = max(1, d.calls // 3)
        stage.keep_loading(gen, "before", third, d.load / 3)
        ok_before_removal = gen.ok
        _remove_tree(stage.queue_dir)
        stage.keep_loading(gen, "removed", third, d.load / 3, until=lambda: os.path.exists(stage.queue))
        recreated = os.path.exists(stage.queue)
        _replace_tree_with_file(stage.queue_dir)  # now the directory cannot be created
        stage.keep_loading(gen, "unusable", third, d.load / 3)
        os.unlink(stage.queue_dir)  # the operator repairs it
        repaired = time.perf_counter()
        stage.keep_loading(gen, "repaired", third, 1.0)
        gen.stop()
        ended = time.monotonic()
        # Every call sent after the repair is written to the new file and must
        # reach Moesif (the flusher follows the file to its new inode); earlier
        # ones may have been dropped and counted while the path was unusable.
        after_repair = gen.ids_sent_after(repaired)
        delivery = stage.wait_delivered(after_repair, ended)
        seen = stage.received()[0]
        status = stage.status()
        # The workers' logging is not configured (Python's last-resort handler
        # prints the bare message); the helper prefixes its own lines.
        errors = stage.log_messages("moesifasgi", "moesif-flush helper", "ERROR", "WARNING", "Traceback")
        out = stage.outcome("6 queue dir removed/unusable", gen, delivery, ok_before_removal=ok_before_removal,
                            recreated=recreated, dropped_after=status.get("dropped"),
                            sent_after_repair=len(after_repair),
                            lost_after_repair=len(set(after_repair) - seen), log_messages=errors)
        out.diagnostics = stage.diagnostics()
        return [out]
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
