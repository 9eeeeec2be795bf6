"""Run wrk against a URL and read requests/s and latency percentiles from its report."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    p90_ms: float = 0.0


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unreadable latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def require_wrk() -> str:
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return path


def run_wrk(url: str, *, seconds: int, connections: int = 16, threads: int = 1, post_json: Optional[dict] = None,
            think_ms: Optional[float] = None, timeout_s: Optional[float] = None) -> WrkResult:
    """wrk's figures for `url`. With `think_ms`, each connection waits that long
    before each request (wrk's `delay()`), so that the load stays below what the
    server can take and the latencies are service times, not queueing. `timeout_s`
    replaces wrk's 2 s timeout per request (a server under valgrind is slower)."""
    cmd = [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if timeout_s is not None:
        cmd.append(f"--timeout={timeout_s:g}s")
    script = None
    lua = ""
    if post_json is not None:
        body = json.dumps(post_json)
        lua += ('wrk.method = "POST"\n'
                f"wrk.body = {json.dumps(body)}\n"
                'wrk.headers["Content-Type"] = "application/json"\n')
    if think_ms is not None:
        lua += f"function delay()\n  return {think_ms:g}\nend\n"
    if lua:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(lua)
        script.close()
        cmd += ["-s", script.name]
    try:
        out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    finally:
        if script is not None:
            os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p90 = _ms(re.search(r"^\s+90%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return WrkResult(rps, p50, p99, total, errors, p90)
