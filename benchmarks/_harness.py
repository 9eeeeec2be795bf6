"""One measured load of the bench app, shared by compare.py and http_overhead.py.

A run starts the sink its mode exports to (the Moesif stand-in for ours and the
original, an OTLP/HTTP sink for apitally and OpenTelemetry, each in its own process),
the app, a warm-up, then reads every process's CPU time from /proc around the measured
wrk load: the worker (its main thread and its other threads, the queue writer among
them), the flusher helper, and the sink. CPU per request is that time divided by the
requests wrk completed. Peak RSS is sampled per process every 250 ms.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _events import RawRecordReader, count_ids  # noqa: E402
from _servers import AppServer, Collector, free_port, wait_for_port  # noqa: E402
from _wrk import WrkResult, run_wrk  # noqa: E402

ECHO_BODY = {"user": "ann", "items": [{"sku": f"SKU-{i}", "qty": i, "note": "x" * 40} for i in range(12)]}
MOESIF_MODES = ("ours", "original")
OTLP_MODES = ("apitally", "otel")
MODE_LABELS = {"bare": "bare", "ours": "this package", "original": "original 1.1.8",
               "apitally": "apitally", "otel": "OpenTelemetry ASGI"}
_TICK = os.sysconf("SC_CLK_TCK")
_WRITER_THREAD = "moesifasgi-queu"   # /proc comm: the first 15 characters of the thread's name


class OtlpSink:
    """`_otlp_sink.py` in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_otlp_sink.py"), "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> Dict[str, int]:
        with urllib.request.urlopen(self.url + "/stats", timeout=60) as response:
            return json.loads(response.read())

    def received_bytes(self) -> int:
        """Cheap (nothing decoded): used to see when exports stop arriving."""
        with urllib.request.urlopen(self.url + "/bytes", timeout=10) as response:
            return int(response.read() or 0)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def checkout_root(checkout: str) -> str:
    """The absolute path of an `--against` checkout. A directory without the package
    would silently measure the installed one against itself: refused."""
    root = os.path.abspath(checkout)
    if not os.path.isfile(os.path.join(root, "moesifasgi", "__init__.py")):
        raise SystemExit(f"--against {checkout}: no moesifasgi package there (expected a checkout of this project)")
    return root


def checkout_env(checkout: str) -> Dict[str, str]:
    """The environment that serves another checkout's package (its directory ahead
    of the installed one on PYTHONPATH, the bench app's directory after it): the B of
    an `--against` A/B."""
    return {"PYTHONPATH": os.pathsep.join([checkout_root(checkout), HERE])}


def require_standard(python: str) -> None:
    """uvicorn[standard] (uvloop, httptools) is how production runs; h11 flatters every middleware."""
    probe = subprocess.run([python, "-c", "import uvloop, httptools"], capture_output=True, cwd="/")
    if probe.returncode != 0:
        raise SystemExit(f"{python} lacks uvloop/httptools: pip install 'uvicorn[standard]' (or -e '.[bench]')")


def stat_cpu(path: str) -> float:
    """utime + stime in seconds from a /proc .../stat file (0 when it is gone)."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK   # utime + stime


def _comm(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _status_field(path: str, name: str) -> int:
    """The first number of the line `name` in a /proc status file (0 when it is gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main_thread_waits(pid: int) -> int:
    """How many times the main thread of `pid` has blocked so far (voluntary context
    switches). A saturated bare worker never blocks: epoll always has work. With a
    second thread that takes the GIL, each time the main thread finds it taken it
    sleeps and is woken, which on a virtual machine costs far more CPU than the
    wait itself (benchmarks/wake_cost.py)."""
    return _status_field(f"/proc/{pid}/task/{pid}/status", "voluntary_ctxt_switches:")


def worker_pids(server: AppServer) -> List[int]:
    return server.worker_pids() or [server.proc.pid]


def workers_waits(server: AppServer) -> int:
    """`main_thread_waits` summed over the server's workers."""
    return sum(map(main_thread_waits, worker_pids(server)))


def cpu_snapshot(server: AppServer, sink_pid: Optional[int]) -> Dict[str, float]:
    """CPU seconds so far: worker main threads, their writer threads, their other threads, helper, sink."""
    snap = {"main": 0.0, "writer": 0.0, "threads": 0.0, "helper": 0.0, "sink": 0.0}
    for pid in worker_pids(server):
        task_dir = f"/proc/{pid}/task"
        try:
            tids = os.listdir(task_dir)
        except OSError:
            continue
        for tid in tids:
            cpu = stat_cpu(f"{task_dir}/{tid}/stat")
            if int(tid) == pid:
                snap["main"] += cpu
            elif _comm(f"{task_dir}/{tid}/comm") == _WRITER_THREAD:
                snap["writer"] += cpu
            else:
                snap["threads"] += cpu
    for pid in server.helper_pids():
        snap["helper"] += stat_cpu(f"/proc/{pid}/stat")
    if sink_pid:
        snap["sink"] += stat_cpu(f"/proc/{sink_pid}/stat")
    return snap


def _rss_kb(pid: int) -> int:
    return _status_field(f"/proc/{pid}/status", "VmRSS:")


class RssSampler(threading.Thread):
    """Peak RSS of the largest worker, of the helper and of all the app's processes together."""

    def __init__(self, server: AppServer) -> None:
        super().__init__(daemon=True)
        self.server, self._halt = server, threading.Event()
        self.worker_kb = self.helper_kb = self.total_kb = 0

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                workers = worker_pids(self.server)
                helpers = self.server.helper_pids()
                self.worker_kb = max([self.worker_kb] + [_rss_kb(p) for p in workers])
                self.helper_kb = max([self.helper_kb] + [_rss_kb(p) for p in helpers])
                self.total_kb = max(self.total_kb, self.server.rss_kb())
            except Exception:
                pass
            self._halt.wait(0.25)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Run:
    wrk: WrkResult
    cpu_us: Dict[str, float] = field(default_factory=dict)   # per request, by role
    main_waits: float = 0.0  # the workers' main threads blocked this many times per request
    expected: int = 0        # responses wrk counted (warm-up included)
    delivered: int = 0       # distinct transaction ids (Moesif) or spans (OTLP) the sink received
    duplicates: int = 0
    delivery_s: float = 0.0  # end of load -> last item received
    complete: bool = True
    worker_rss_mb: float = 0.0
    helper_rss_mb: float = 0.0
    total_rss_mb: float = 0.0

    @property
    def worker_us(self) -> float:
        return self.cpu_us["main"] + self.cpu_us["writer"] + self.cpu_us["threads"]


@dataclass
class LoadSpec:
    endpoint: str
    seconds: int
    connections: int
    warmup: int = 1
    server: str = "uvicorn"
    workers: int = 1
    callbacks: bool = True
    flusher: str = "embedded"
    durability: Optional[str] = None
    deliver_timeout: float = 30.0
    quiet: float = 3.0
    wait_delivery: bool = True
    extra_env: Dict[str, str] = field(default_factory=dict)   # e.g. bench_app's BENCH_NORECORD
    think_ms: Optional[float] = None   # each connection waits this long before each request (below saturation)


def measure(mode: str, python: str, spec: LoadSpec, workdir: str, seq: int) -> Run:
    record = os.path.join(workdir, f"events-{seq}.raw") if mode in MOESIF_MODES else None
    # Undecoded during the load: the sink's CPU (Moesif's or the APM vendor's, in
    # production) must not be charged to the package that sends it more.
    collector = Collector(raw_record=record) if record else None
    sink = OtlpSink() if mode in OTLP_MODES else None
    env = {"MOESIF_QUEUE_PATH": os.path.join(workdir, f"queue-{seq}.sqlite"), "MOESIF_FLUSHER": spec.flusher,
           "MOESIF_BASE_URI": collector.url if collector else "http://127.0.0.1:9",
           "BENCH_OTLP_ENDPOINT": sink.url if sink else "http://127.0.0.1:9"}
    if spec.callbacks:
        env["BENCH_CALLBACKS"] = "1"
    if spec.durability:
        env["MOESIF_DURABILITY"] = spec.durability
    env.update(spec.extra_env)
    server = AppServer(python, mode, env, workers=spec.workers, server=spec.server,
                       log_path=os.path.join(workdir, f"server-{seq}.log"))
    sampler = RssSampler(server)
    sampler.start()
    sink_pid = collector.proc.pid if collector else sink.proc.pid if sink else None
    try:
        url = server.url + spec.endpoint
        post = ECHO_BODY if spec.endpoint == "/echo" else None
        warm = run_wrk(url, seconds=spec.warmup, connections=spec.connections, post_json=post,
                       think_ms=spec.think_ms)
        before, waits_before = cpu_snapshot(server, sink_pid), workers_waits(server)
        result = run_wrk(url, seconds=spec.seconds, connections=spec.connections, post_json=post,
                         think_ms=spec.think_ms)
        run = Run(result, expected=warm.requests + result.requests)
        if spec.wait_delivery and record:
            _wait_moesif(run, record, spec)
        elif spec.wait_delivery and sink:
            _wait_otlp(run, sink, spec)
        # After the delivery: work deferred past the response (posting, exporting)
        # is still work per request. Idle waiting costs next to nothing.
        after, waits_after = cpu_snapshot(server, sink_pid), workers_waits(server)
        n = max(result.requests, 1)
        run.main_waits = (waits_after - waits_before) / n
        run.cpu_us = {k: (after[k] - before[k]) * 1e6 / n for k in before}
    finally:
        sampler.stop()
        server.stop()
        if collector:
            collector.stop()
        if sink:
            sink.stop()
    run.worker_rss_mb, run.helper_rss_mb = sampler.worker_kb / 1024, sampler.helper_kb / 1024
    run.total_rss_mb = sampler.total_kb / 1024
    return run


def _wait_moesif(run: Run, record: str, spec: LoadSpec) -> None:
    ended = time.monotonic()
    last, last_at = -1, ended
    reader = RawRecordReader(record)
    while time.monotonic() - ended < spec.deliver_timeout:
        count = reader.poll()
        if count != last:
            last, last_at = count, time.monotonic()
        if count >= run.expected or time.monotonic() - last_at > spec.quiet:
            break
        time.sleep(0.1)
    reader.poll()
    seen, dups = count_ids(reader.events)
    run.delivered, run.duplicates = len(seen), dups
    run.delivery_s = last_at - ended
    run.complete = run.delivered >= run.expected


def _wait_otlp(run: Run, sink: OtlpSink, spec: LoadSpec) -> None:
    """Spans, not calls: OpenTelemetry's ASGI middleware makes a server span per call
    plus one per `send` unless told otherwise; apitally one per call. apitally posts
    every 15 s (5 s once the sink says so), hence the longer quiet period."""
    ended = time.monotonic()
    last, last_at = -1, ended
    quiet = max(spec.quiet, 17.0)
    while time.monotonic() - ended < max(spec.deliver_timeout, quiet + 5):
        count = sink.received_bytes()
        if count != last:
            last, last_at = count, time.monotonic()
            if sink.stats()["spans"] >= run.expected:
                break
        elif time.monotonic() - last_at > quiet:
            break
        time.sleep(0.5)
    run.delivered = sink.stats()["spans"]
    run.delivery_s = last_at - ended
    run.complete = run.delivered >= run.expected
