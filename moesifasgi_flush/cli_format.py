"""Figures for people: ages, sizes, times, and the lines of `moesif-flush status`."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple


def age(seconds: Optional[float]) -> str:
    """`0.4 s`, `42 s`, `3 min 12 s`, `5 h 02 min`, `3 d 4 h`."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def size(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"  # pragma: no cover


def ago(ts: Optional[float], now: Optional[float] = None) -> str:
    if not isinstance(ts, (int, float)):
        return "never"
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    delta = now - ts
    return f"{stamp} ({age(delta)} ago)" if delta >= 0 else f"{stamp} (in {age(-delta)})"


def _count(n: int) -> str:
    return f"{n:,}"


def status_lines(info: Dict[str, Any], now: Optional[float] = None) -> List[str]:
    now = time.time() if now is None else now
    rows: List[Tuple[str, str]] = []
    rows.append(("queue file", f"{info['queue_path']} ({size(info['queue_file_bytes'])}, "
                               f"schema {info['schema_version']})"))
    if info.get("application_ids"):
        rows.append(("application id", ", ".join(info["application_ids"])))
    pending = f"{_count(info['pending'])} events"
    if info["pending"]:
        pending += f" ({_count(info['in_flight'])} in flight), oldest {age(info['oldest_pending_age_s'])}"
    rows.append(("pending", pending))
    rows.append(("sent", f"{_count(info['sent'])} events"))
    rows.append(("dropped", f"{_count(info['dropped'])} events"))
    problems = info.get("problems") or {}
    if problems:  # per reason: drops, and calls recorded without a field
        rows.append(("problems", ", ".join(f"{reason}={count}" for reason, count in problems.items())))
    rows.append(("dead letters", f"{_count(info['dead_letters'])} now ({_count(info['dead_lettered'])} events "
                                 "dead-lettered in all)"))
    leader = info.get("leader")
    if leader is None:
        rows.append(("leader", "none (no process holds the flusher lease)"))
    else:
        text = f"pid {leader['pid']} on {leader['host']}, for {age(now - leader['since'])}"
        left = age(max(0.0, leader["expires_at"] - now)) if leader.get("expires_at") is not None else "-"
        if leader.get("running_here") is False:
            text += (f": NOT RUNNING here (it died, or runs in another container); "
                     f"its lease expires in {left}")
        elif leader.get("expires_at") is not None:
            text += f" (lease renewed, valid {left} more)"
        rows.append(("leader", text))
    rows.append(("last success", ago(info.get("last_success_at"), now)))
    error = info.get("last_error")
    if isinstance(error, dict):
        what = error.get("error") or (f"HTTP {error['status']}" if error.get("status") else error.get("outcome"))
        rows.append(("last error", f"{ago(error.get('at'), now)}: {what}"))
    else:
        rows.append(("last error", "none" if error is None else str(error)))
    p = info.get("profiles") or {}
    if p:
        rows.append(("profiles", f"{_count(p.get('profiles_pending', 0))} pending, "
                                 f"{_count(p.get('profiles_sent', 0))} sent, "
                                 f"{_count(p.get('profiles_dropped', 0))} dropped, "
                                 f"{_count(p.get('profile_dead_letters', 0))} dead letters"))
    return [f"{label + ':':<16}{value}" for label, value in rows]


def watch_line(info: Dict[str, Any], rates: Optional[Tuple[float, float]]) -> str:
    """One line per tick of `status --watch` when stdout is not a terminal."""
    leader = info.get("leader")
    rate = "" if rates is None else f" ({rates[0]:.1f} sent/s, backlog {rates[1]:+.1f}/s)"
    return (f"{time.strftime('%H:%M:%S')} pending {info['pending']} oldest {age(info['oldest_pending_age_s'])} "
            f"sent {info['sent']}{rate} dropped {info['dropped']} dead_letters {info['dead_letters']} "
            f"leader {'pid %s' % leader['pid'] if leader else 'none'}")
