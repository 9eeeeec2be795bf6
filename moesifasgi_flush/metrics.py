"""Prometheus / OpenMetrics metrics of a queue file, for `run --metrics-port` and
`status --format openmetrics|prometheus`.

Only the daemon and the CLI import this module (and with it `prometheus_client`);
the middleware and the embedded helper never do, so the app's workers pay nothing
for it. Every figure is read from the queue file at scrape time through a
read-only connection, so a scrape can never change the queue, and what it shows
is what every process sharing the file did (the counters are durable), not only
this process. The post failures by kind and `moesifasgi_leader` of the scraped
process are the daemon's own.
"""
from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.registry import Collector, CollectorRegistry

from moesifasgi import storage

from .status import queue_status

__all__ = ["ProcessFigures", "QueueCollector", "render", "serve"]

logger = logging.getLogger(__name__)


@dataclass
class ProcessFigures:
    """What only the running daemon knows: whether it leads, its failed posts by kind."""
    pid: int
    host: str
    is_leader: bool = False
    post_failures: Dict[str, int] = field(default_factory=dict)


class QueueCollector(Collector):
    def __init__(self, path: str, process: Optional[Callable[[], ProcessFigures]] = None) -> None:
        self.path = path
        self.process = process

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("moesifasgi_queue_up", "1 when the queue file could be read, 0 when it could not")
        try:
            conn = storage.connect_readonly(self.path)
            try:
                info = queue_status(conn, self.path)
            finally:
                conn.close()
        except Exception as exc:  # a scrape reports the problem instead of failing
            logger.debug("cannot read %s for metrics: %s", self.path, exc)
            up.add_metric([], 0)
            yield up
            yield from self._process_metrics(None)
            return
        up.add_metric([], 1)
        yield up
        yield from queue_metrics(info)
        yield from self._process_metrics(info.get("leader"))

    def _process_metrics(self, leader: Optional[Dict[str, Any]]) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("moesifasgi_leader", "1 for the process holding the flusher lease",
                                  labels=["pid", "host"])
        if self.process is not None:
            me = self.process()
            gauge.add_metric([str(me.pid), me.host], 1 if me.is_leader else 0)
            failures = CounterMetricFamily("moesifasgi_post_failures", "Failed posts to Moesif by this daemon, "
                                           "by kind (retry: unreachable or 408/429/5xx; auth: 401/402/403; "
                                           "reject: other 4xx; too_large: 413)", labels=["kind"])
            for kind in ("retry", "auth", "reject", "too_large"):
                failures.add_metric([kind], me.post_failures.get(kind, 0))
            yield failures
        elif leader is not None:
            gauge.add_metric([str(leader["pid"]), str(leader["host"])], 1)
        yield gauge


def queue_metrics(info: Dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one `queue_status()` dict."""
    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, value=value)

    profiles = info.get("profiles") or {}
    age = info.get("oldest_pending_age_s")
    yield gauge("moesifasgi_events_pending", "Events in the queue, in flight included", info["pending"])
    yield gauge("moesifasgi_events_in_flight", "Events claimed by a flusher and being posted", info["in_flight"])
    yield counter("moesifasgi_events_sent", "Events Moesif accepted", info["sent"])
    yield counter("moesifasgi_events_dropped", "Events dropped before the queue (queue full, storage "
                  "unusable, a callback failed); the reason is in the app's log", info["dropped"])
    problems = info.get("problems") or {}
    by_reason = CounterMetricFamily("moesifasgi_events_dropped_by_reason", "Events dropped, by reason "
                                    "(queue-full, storage faults...), counted since schema 3", labels=["reason"])
    recorded = CounterMetricFamily("moesifasgi_recording_problems", "Calls recorded with a problem, by reason "
                                   "(a callback raised or timed out, MASK_EVENT_MODEL failed...)", labels=["reason"])
    for reason, count in problems.items():
        if reason.startswith("drop:"):
            by_reason.add_metric([reason[len("drop:"):]], count)
        else:
            recorded.add_metric([reason], count)
    yield by_reason
    yield recorded
    yield counter("moesifasgi_events_dead_lettered", "Events moved to the dead letters", info["dead_lettered"])
    yield gauge("moesifasgi_dead_letters", "Rows in the dead-letter table now (events and profiles)",
                info["dead_letters"])
    yield gauge("moesifasgi_oldest_pending_age_seconds", "Age of the oldest pending event (0 when none)",
                0.0 if age is None else age)
    yield gauge("moesifasgi_queue_file_bytes", "Bytes of the queue file and its WAL", info["queue_file_bytes"])
    last = info.get("last_success_at")
    if isinstance(last, (int, float)):
        yield gauge("moesifasgi_last_success_timestamp_seconds", "When Moesif last accepted a batch (Unix time)",
                    last)
    yield gauge("moesifasgi_lease_held", "1 when some process holds the flusher lease",
                0 if info.get("leader") is None else 1)
    yield gauge("moesifasgi_profiles_pending", "User and company profile updates in the queue",
                profiles.get("profiles_pending", 0))
    yield counter("moesifasgi_profiles_sent", "Profile updates Moesif accepted", profiles.get("profiles_sent", 0))
    yield counter("moesifasgi_profiles_dropped", "Profile updates dropped before the queue",
                  profiles.get("profiles_dropped", 0))
    yield counter("moesifasgi_profiles_dead_lettered", "Profile updates moved to the dead letters",
                  profiles.get("profiles_dead_lettered", 0))


def _registry(path: str, process: Optional[Callable[[], ProcessFigures]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(path, process))
    return registry


def render(path: str, fmt: str = "openmetrics") -> str:
    """The metrics of the queue at `path` as OpenMetrics text (ends with `# EOF`) or the
    classic Prometheus text format (what node_exporter's textfile collector parses)."""
    registry = _registry(path, None)
    if fmt == "openmetrics":
        return om_exposition.generate_latest(registry).decode()
    return exposition.generate_latest(registry).decode()


def serve(path: str, port: int, address: str = "127.0.0.1",
          process: Optional[Callable[[], ProcessFigures]] = None) -> Tuple[Any, threading.Thread]:
    """Serve /metrics on address:port from a daemon thread; returns (server, thread).

    Loopback by default: the figures say nothing secret, but nothing should listen
    on a public interface unless asked. Port 0 picks a free port
    (`server.server_port` tells which).
    """
    return exposition.start_http_server(port, addr=address, registry=_registry(path, process))


def this_process(is_leader: Callable[[], bool], failures: Callable[[], Dict[str, int]]) -> Callable[[], ProcessFigures]:
    import os
    host = socket.gethostname()

    def figures() -> ProcessFigures:
        return ProcessFigures(os.getpid(), host, is_leader(), dict(failures()))
    return figures
