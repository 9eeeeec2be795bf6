"""Start and stop the processes a benchmark needs: the app under uvicorn or
gunicorn, and the loopback Moesif collector.

A server counts as started once every one of its workers has answered a request,
not once the port is bound: the master binds it before its workers have imported
the app, which takes seconds on a busy machine.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Optional, Set, Tuple

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the process group `proc` leads (started with start_new_session),
    then SIGKILL to whatever of it is left: a worker forked while the master was
    stopping can outlive it, and nothing of the group may survive into the next run."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


# How long workers may take to import the app and answer, on a slow shared machine.
READY_TIMEOUT = 120.0


def answering_pids(url: str, probes: int, path: str = "/ready", timeout: float = 10.0) -> Set[int]:
    """Send `probes` requests at once, each on a fresh connection so that each may
    be accepted by another worker; the pids (`{"pid": ...}`) of the workers that answered."""
    async def main() -> Set[int]:
        limits = httpx.Limits(max_connections=probes, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            answers = await asyncio.gather(*(client.get(path) for _ in range(probes)), return_exceptions=True)
        pids = set()
        for answer in answers:
            if isinstance(answer, httpx.Response) and answer.status_code == 200:
                pids.add(int(answer.json()["pid"]))
        return pids

    return asyncio.run(main())


def wait_until_answering(url: str, workers: int, exclude: Iterable[int] = (), timeout: float = READY_TIMEOUT,
                         path: str = "/ready") -> Set[int]:
    """Probe until `workers` distinct worker pids (none of them in `exclude`, the
    workers being replaced) have answered; their pids. Raises after `timeout`."""
    excluded = set(exclude)
    answered: Set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        try:
            answered |= answering_pids(url, 4 * workers, path) - excluded
        except OSError:
            pass
        if len(answered) >= workers:
            return answered
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{len(answered)} of {workers} workers answered {url}{path} within {timeout:g} s")
        time.sleep(0.05)


def _is_helper(args: str) -> bool:
    # Its module's name now, and before the flusher moved (to measure older checkouts).
    return "moesifasgi.delivery.helper" in args or "moesifasgi_flush.helper" in args


class Collector:
    """The loopback Moesif stand-in, in its own process so it never shares our GIL."""

    def __init__(self, record: Optional[str] = None, raw_record: Optional[str] = None) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "moesifasgi.testing.local_collector", "--port", str(self.port)]
        if record:
            cmd += ["--record", record]
        if raw_record:
            cmd += ["--record-raw", raw_record]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class AppServer:
    def __init__(self, python: str, mode: str, env: Dict[str, str], workers: int = 1, server: str = "uvicorn",
                 port: Optional[int] = None, log_path: Optional[str] = None) -> None:
        self.port = port or free_port()
        self.workers = workers
        full_env = dict(os.environ, BENCH_MODE=mode, PYTHONPATH=HERE)
        full_env.update(env)  # may set PYTHONPATH: another checkout's package ahead of the installed one
        if server == "gunicorn":
            cmd: List[str] = [
                python, "-m", "gunicorn", "bench_app:app", "-k", "uvicorn_worker.UvicornWorker",
                "-w", str(workers), "-b", f"127.0.0.1:{self.port}", "--log-level", "warning",
                "--graceful-timeout", "10",
            ]
        else:
            cmd = [
                python, "-m", "uvicorn", "bench_app:app", "--port", str(self.port), "--log-level", "warning",
                "--no-access-log", "--workers", str(workers),
            ]
        self._log = open(log_path, "ab") if log_path else None
        self.proc = subprocess.Popen(cmd, env=full_env, cwd=HERE, start_new_session=True,
                                     stdout=self._log, stderr=self._log)
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_for_port(self.port, READY_TIMEOUT)
            self.ready_pids = self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, replacing: Iterable[int] = (), timeout: float = READY_TIMEOUT) -> Set[int]:
        """Wait until every worker answers (`bench_app`'s `/ready`, which SKIP leaves
        out of the events); with `replacing`, until that many new workers do."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the server exited with {self.proc.returncode} before answering")
        return wait_until_answering(self.url, self.workers, replacing, timeout)

    def _session(self) -> List[Tuple[int, int, str]]:
        """(pid, parent pid, command) of every process of the server's session."""
        out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-s", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        rows = []
        for line in out.splitlines():
            pid, ppid, args = line.split(None, 2)
            rows.append((int(pid), int(ppid), args))
        return rows

    def pids(self) -> List[int]:
        """The server process and its workers (not the flusher helper a worker starts)."""
        return [self.proc.pid] + [pid for pid, ppid, args in self._session()
                                  if ppid == self.proc.pid and not _is_helper(args)]

    def helper_pids(self) -> List[int]:
        return [pid for pid, _, args in self._session() if _is_helper(args)]

    def worker_pids(self) -> List[int]:
        """The worker processes (children of the server process)."""
        return self.pids()[1:]

    def rss_kb(self) -> int:
        """Sum of resident memory of the server, its workers and their flusher helper, in KiB."""
        total = 0
        for pid, _, _ in self._session():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self, timeout: float = 15.0) -> None:
        stop_group(self.proc, timeout)
        if self._log is not None:
            self._log.close()
