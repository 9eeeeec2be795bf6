"""Start and stop the processes a benchmark needs: the app under uvicorn or
gunicorn, and the loopback Moesif collector."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def _is_helper(args: str) -> bool:
    # Its module's name now, and before the flusher moved (to measure older checkouts).
    return "moesifasgi.delivery.helper" in args or "moesifasgi_flush.helper" in args


class Collector:
    """The loopback Moesif stand-in, in its own process so it never shares our GIL."""

    def __init__(self, record: Optional[str] = None, raw_record: Optional[str] = None) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "moesifasgi_flush.local_collector", "--port", str(self.port)]
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
        full_env = dict(os.environ, BENCH_MODE=mode, PYTHONPATH=HERE)
        full_env.update(env)  # may set PYTHONPATH: another checkout's package ahead of the installed one
        if server == "gunicorn":
            cmd: List[str] = [
                python, "-m", "gunicorn", "bench_app:app", "-k", "uvicorn.workers.UvicornWorker",
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
        wait_for_port(self.port)
        time.sleep(0.2)
        if self.proc.poll() is not None:
            # Another process (on a shared machine) took the port between free_port()
            # and the bind: what answers there is not this server.
            raise RuntimeError(f"the server exited at start (exit {self.proc.returncode}); port {self.port} taken?")
        self.url = f"http://127.0.0.1:{self.port}"

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
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        # A worker forked while the master was stopping can outlive it: nothing of
        # the group may survive into the next run.
        time.sleep(0.2)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self._log is not None:
            self._log.close()
