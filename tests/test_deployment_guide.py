"""The README's deployment guide, run as far as a test can: its systemd unit,
Kubernetes sidecar and process-manager examples are read out of README.md, their
time limits checked against each other, and their `moesif-flush` commands run
against a queue that does not exist yet (a fresh host) and stopped with a backlog
(a rollout during an outage), with a real loopback collector.

A reason to fail here is a README that would break a real deployment: a flag
that does not exist, a stop timeout shorter than the drain it waits for.
"""
from __future__ import annotations

import configparser
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from tests.flush_support import APP_ID, insert_events, query, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"
STOP_MARGIN = 10.0  # what `run` needs after --drain-on-stop: batches in flight, the lease


def _guide() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### Running `moesif-flush run` as a separate process")
    return text[start:text.index("\n### ", start + 10)]


def _blocks(lang: str) -> List[str]:
    """The fenced code blocks of the guide in language `lang` ("" for none)."""
    found, current, current_lang = [], None, ""
    for line in _guide().splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, current_lang = [], line[3:].strip()
            else:
                if current_lang == lang:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def _systemd() -> configparser.ConfigParser:
    unit = next(b for b in _blocks("ini") if "[Service]" in b)
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(unit)
    return parser


def _systemd_environment(service: configparser.SectionProxy) -> Dict[str, str]:
    unit = next(b for b in _blocks("ini") if "[Service]" in b)
    pairs = [line.split("=", 2)[1:] for line in unit.splitlines() if line.startswith("Environment=")]
    return {k: v for k, v in pairs}


def _kubernetes() -> dict:
    return yaml.safe_load(next(b for b in _blocks("yaml") if "initContainers" in b))


def _pre_stop() -> dict:
    return yaml.safe_load(next(b for b in _blocks("yaml") if "preStop" in b))


def _procfile() -> Dict[str, str]:
    block = next(b for b in _blocks("") if "web:" in b)
    return dict(line.split(": ", 1) for line in block.strip().splitlines())


def _supervisord() -> configparser.SectionProxy:
    block = next(b for b in _blocks("ini") if "[program:" in b)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(block)
    return parser["program:moesif-flush"]


def _flusher_args(argv: List[str]) -> List[str]:
    assert os.path.basename(argv[0]) == "moesif-flush", argv
    return argv[1:]


def _option(args: List[str], name: str) -> Optional[str]:
    return args[args.index(name) + 1] if name in args else None


def _sidecar() -> dict:
    spec = _kubernetes()["spec"]
    [sidecar] = [c for c in spec["initContainers"] if c["name"] == "moesif-flush"]
    return sidecar


# -- the examples agree with themselves --------------------------------------------

def test_the_systemd_unit_waits_longer_than_the_drain_it_asks_for():
    service = _systemd()["Service"]
    args = _flusher_args(shlex.split(service["ExecStart"]))
    drain = float(_option(args, "--drain-on-stop") or 0)
    assert drain > 0 and float(service["TimeoutStopSec"]) >= drain + STOP_MARGIN
    assert service["Restart"] == "always" and float(service["RestartSec"]) >= 1  # no start-limit storm
    env = _systemd_environment(service)
    # A fresh host: systemd creates the queue's directory for the unit's user.
    assert os.path.dirname(env["MOESIF_QUEUE_PATH"]) == "/var/lib/" + service["StateDirectory"]
    assert service["StateDirectoryMode"] == "0700" and service["KillSignal"] == "SIGTERM"


def test_the_kubernetes_pod_gives_the_sidecar_time_to_drain_and_shares_the_queue():
    spec = _kubernetes()["spec"]
    sidecar = _sidecar()
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: stopped after the app
    args = _flusher_args(sidecar["command"])
    drain = float(_option(args, "--drain-on-stop") or 0)
    assert drain > 0 and spec["terminationGracePeriodSeconds"] >= drain + STOP_MARGIN
    [app] = spec["containers"]
    app_env = {e["name"]: e.get("value") for e in app["env"]}
    side_env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert app_env["MOESIF_FLUSHER"] == "external"
    assert app_env["MOESIF_QUEUE_PATH"] == side_env["MOESIF_QUEUE_PATH"]
    assert app["volumeMounts"] == sidecar["volumeMounts"]
    pre_stop = _pre_stop()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + drain + STOP_MARGIN
    assert int(_option(args, "--metrics-port")) == sidecar["ports"][0]["containerPort"]


def test_the_supervisord_program_waits_longer_than_the_drain():
    program = _supervisord()
    args = _flusher_args(shlex.split(program["command"]))
    assert float(program["stopwaitsecs"]) >= float(_option(args, "--drain-on-stop")) + STOP_MARGIN
    assert program["stopsignal"] == "TERM"


# -- and their commands behave ------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _localize(args: List[str]) -> List[str]:
    """The example's arguments with a free loopback port for its metrics."""
    args = list(args)
    if "--metrics-port" in args:
        args[args.index("--metrics-port") + 1] = str(_free_port())
    if "--metrics-address" in args:
        args[args.index("--metrics-address") + 1] = "127.0.0.1"
    return args


def _cli(args: List[str], env: Dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "moesifasgi_flush.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _leads(path: str) -> bool:
    return os.path.exists(path) and query(path, "SELECT COUNT(*) FROM leases")[0][0] == 1


def _examples():
    service = _systemd()["Service"]
    yield "systemd", _flusher_args(shlex.split(service["ExecStart"])), float(service["TimeoutStopSec"]), None
    sidecar = _sidecar()
    probe = _flusher_args(sidecar["livenessProbe"]["exec"]["command"])
    yield "kubernetes", _flusher_args(sidecar["command"]), float(_kubernetes()["spec"]["terminationGracePeriodSeconds"]), probe
    yield "procfile", _flusher_args(shlex.split(_procfile()["moesif"])), None, None
    program = _supervisord()
    yield "supervisord", _flusher_args(shlex.split(program["command"])), float(program["stopwaitsecs"]), None


@pytest.mark.parametrize("name, args, stop_limit, probe", list(_examples()), ids=lambda v: v if isinstance(v, str) else "")
def test_each_example_starts_on_a_fresh_host_and_drains_its_backlog_when_stopped(
        tmp_path, collector, name, args, stop_limit, probe):
    path = str(tmp_path / "fresh-host" / "moesif.sqlite")  # neither the file nor its directory exists
    env = dict(os.environ, MOESIF_QUEUE_PATH=path, MOESIF_APPLICATION_ID=APP_ID, MOESIF_BASE_URI=collector.url)
    args = _localize(args)
    proc = _cli(args, env)
    try:
        assert wait_until(lambda: _leads(path), timeout=30), f"{name}: the daemon never took the lease"
        if "--metrics-port" in args:
            url = f"http://127.0.0.1:{_option(args, '--metrics-port')}/metrics"
            assert wait_until(lambda: _scrape(url), timeout=20) and "moesifasgi_events_pending" in _scrape(url)
        if probe is not None:
            checked = subprocess.run([sys.executable, "-m", "moesifasgi_flush.cli", *probe], env=env,
                                     capture_output=True, text=True, timeout=60)
            assert checked.returncode == 0, checked.stdout + checked.stderr
        # The rollout comes during an outage: a backlog waits when the stop signal arrives.
        collector.fail_for(503, 600, {"Retry-After": "1"})
        insert_events(path, 200)
        assert wait_until(lambda: collector.stats()["requests"] > 0, timeout=20)
        proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        time.sleep(0.5)
        collector.reset_faults()  # Moesif is back while the daemon is stopping
        _, err = proc.communicate(timeout=(stop_limit or 60) + 30)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    if "--drain-on-stop" in args:
        assert query(path, "SELECT value FROM counters WHERE name = 'pending'") == [(0,)], f"{name}: backlog lost"
        assert collector.event_count == 200
    if stop_limit is not None:
        assert took < stop_limit, f"{name}: stopping took {took:.1f} s, over the example's {stop_limit} s"
    assert "Traceback" not in err


def _scrape(url: str) -> Optional[str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except OSError:
        return None
