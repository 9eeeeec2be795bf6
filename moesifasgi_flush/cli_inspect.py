"""`moesif-flush` commands that look at a queue: status, check, queues, peek; and migrate.

Every one of them but `migrate` opens the file read-only (`storage.connect_readonly`):
a typo in `--queue` pointing at another SQLite file is refused, never altered.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import click

from moesifasgi import storage
from moesifasgi.queue_location import default_queue_name, queue_directories
from moesifasgi.storage import queue_store as qs

from .cli import CliContext, cli, command, pass_ctx
from .cli_format import age, ago, size, status_lines, watch_line
from .status import queue_status


def _read_status(ctx: CliContext) -> Dict[str, Any]:
    conn = ctx.connect_readonly()
    try:
        return queue_status(conn, ctx.queue_path())
    finally:
        conn.close()


@command(cli)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every field.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "openmetrics", "prometheus"]),
              default="text", show_default=True,
              help="openmetrics / prometheus: metrics text (see run --metrics-port), for node_exporter's "
                   "textfile collector or a push.")
@click.option("--watch", "watch", type=float, is_flag=False, flag_value=2.0, default=None, metavar="[SECONDS]",
              help="Print again every SECONDS (2 when not given) with rates: sent/s and the backlog trend.")
@click.option("--count", type=click.IntRange(min=1), default=None, hidden=True)
@pass_ctx
def status(ctx: CliContext, as_json: bool, fmt: str, watch: Optional[float], count: Optional[int]) -> None:
    """Show pending events, in-flight claims, dead letters, the leader and the last outcomes.

    Ages and sizes are for people; --json gives every field, in seconds and bytes.

    \b
    Example:
      moesif-flush status --queue /var/lib/app/moesif.sqlite
      moesif-flush status --json
      moesif-flush status --watch 5
      moesif-flush status --format prometheus > /var/lib/node_exporter/moesif.prom
    """
    if as_json:
        fmt = "json"
    if watch is not None:
        if watch <= 0:
            raise click.BadParameter("must be more than 0 seconds", param_hint="--watch")
        _watch(ctx, watch, count)
        return
    if fmt in ("openmetrics", "prometheus"):
        ctx.connect_readonly().close()  # an unusable file is an error here, not a "queue_up 0"
        from .metrics import render  # prometheus_client: only when asked for
        click.echo(render(ctx.queue_path(), fmt), nl=False)
        return
    info = _read_status(ctx)
    if fmt == "json":
        click.echo(json.dumps(info, sort_keys=True))
        return
    for line in status_lines(info):
        click.echo(line)


def _watch(ctx: CliContext, interval: float, count: Optional[int]) -> None:
    try:
        _watch_loop(ctx, interval, count)
    except KeyboardInterrupt:
        return  # Ctrl-C is the normal way out of --watch: exit 0


def _watch_loop(ctx: CliContext, interval: float, count: Optional[int]) -> None:
    tty = sys.stdout.isatty()
    previous: Optional[Dict[str, Any]] = None
    previous_at = 0.0
    shown = 0
    while True:
        info = _read_status(ctx)
        now = time.monotonic()
        rates = None
        if previous is not None:
            span = max(now - previous_at, 1e-6)
            rates = ((info["sent"] - previous["sent"]) / span, (info["pending"] - previous["pending"]) / span)
        if tty:
            click.clear()
            for line in status_lines(info):
                click.echo(line)
            click.echo(f"{'rates:':<16}" + ("measuring..." if rates is None else
                       f"{rates[0]:.1f} sent/s, backlog {rates[1]:+.1f}/s") + f"  (every {interval:g} s, Ctrl-C stops)")
        else:
            click.echo(watch_line(info, rates))
        previous, previous_at = info, now
        shown += 1
        if count is not None and shown >= count:
            return
        time.sleep(interval)


@command(cli)
@click.option("--max-age", type=click.FloatRange(min=0), default=300.0, show_default=True, metavar="SECONDS",
              help="Unhealthy when the oldest pending event is older than this (0: never).")
@click.option("--require-leader", is_flag=True, help="Unhealthy when no process holds the flusher lease.")
@click.option("--dead-letter-window", type=click.FloatRange(min=0), default=300.0, show_default=True,
              metavar="SECONDS", help="Unhealthy when events were dead-lettered this recently (0: never).")
@pass_ctx
def check(ctx: CliContext, max_age: float, require_leader: bool, dead_letter_window: float) -> None:
    """Health check for probes and monitors: exit 0 when healthy, 1 with one line naming the problem.

    Problems: the file is missing or unusable, the oldest pending event is older
    than --max-age (nothing drains: Moesif down, no flusher, bad application id),
    no leader (with --require-leader), events dead-lettered recently.
    Read-only, like status. As a Kubernetes liveness probe of the sidecar, check
    only that the daemon holds the lease (an outage must not restart it):
    `check --require-leader --max-age 0 --dead-letter-window 0`.

    \b
    Example:
      moesif-flush check --max-age 120 --require-leader && echo healthy
    """
    try:
        conn = ctx.connect_readonly()
    except click.ClickException as exc:
        _unhealthy(f"queue file unusable: {exc.message}")
    try:
        info = queue_status(conn, ctx.queue_path())
        recent, reason = qs.newest_dead_letters(conn, time.time() - dead_letter_window) if dead_letter_window else (0, None)
    finally:
        conn.close()
    oldest = info["oldest_pending_age_s"]
    last_error = info.get("last_error") or {}
    cause = f"; last error: {last_error.get('error') or last_error.get('outcome')}" if last_error else ""
    if max_age and oldest is not None and oldest > max_age:
        _unhealthy(f"the oldest pending event is {age(oldest)} old (over --max-age {max_age:g} s); "
                   f"{info['pending']} pending{cause}")
    if require_leader and info["leader"] is None:
        _unhealthy("no process holds the flusher lease: no flusher is running for this queue")
    if recent:
        _unhealthy(f"{recent} events dead-lettered in the last {dead_letter_window:g} s (latest: {reason}); "
                   "see `moesif-flush dead-letters list`")
    leader = info["leader"]
    click.echo(f"ok: {info['pending']} pending" + (f", oldest {age(oldest)}" if oldest is not None else "")
               + (f", leader pid {leader['pid']} on {leader['host']}" if leader else ", no leader"))


def _unhealthy(message: str) -> None:
    click.echo(f"unhealthy: {message}")
    sys.exit(1)


@command(cli)
@click.option("--dir", "directories", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Look in DIR instead of the default directories (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_ctx
def queues(ctx: CliContext, directories: tuple, as_json: bool) -> None:
    """List the queue files in the default directories, with their size and counts.

    A queue's default name hashes the application id and the app's working
    directory; the row marked `*` is the file that --application-id gives from
    the current directory. Read-only.

    \b
    Example:
      moesif-flush queues
      moesif-flush queues --application-id "$MOESIF_APPLICATION_ID"
    """
    dirs = list(directories) or list(dict.fromkeys(queue_directories()))
    mine = default_queue_name(ctx.application_id) if ctx.application_id else None
    found: List[Dict[str, Any]] = []
    for directory in dirs:
        for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*.sqlite"))):
            found.append(_describe(path, os.path.basename(path) == mine))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"no queue files in {', '.join(dirs)}")
        return
    for row in found:
        mark = "*" if row["this_app"] else " "
        if row.get("error"):
            click.echo(f"{mark} {row['path']}  {size(row['file_bytes'])}  unusable: {row['error']}")
            continue
        app = f"  app {', '.join(row['application_ids'])}" if row.get("application_ids") else ""
        success = f", last success {ago(row['last_success_at'])}" if row.get("last_success_at") else ""
        click.echo(f"{mark} {row['path']}  {size(row['file_bytes'])}  {row['pending']} pending, "
                   f"{row['sent']} sent, {row['dead_letters']} dead letters{success}{app}")
    if mine is not None and not any(r["this_app"] for r in found):
        click.echo(f"(no {mine} yet: the default file for this application id run from {os.getcwd()})")


def _describe(path: str, this_app: bool) -> Dict[str, Any]:
    row: Dict[str, Any] = {"path": path, "this_app": this_app, "file_bytes": _bytes(path),
                           "modified_at": os.path.getmtime(path)}
    try:
        conn = storage.connect_readonly(path)
    except storage.QueueError as exc:
        row["error"] = str(exc)
        return row
    try:
        info = queue_status(conn, path)
    finally:
        conn.close()
    for key in ("application_ids", "pending", "sent", "dropped", "dead_letters", "oldest_pending_age_s",
                "last_success_at", "leader"):
        row[key] = info.get(key)
    return row


def _bytes(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


@command(cli)
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True, help="How many events.")
@pass_ctx
def peek(ctx: CliContext, count: int) -> None:
    """Print the next N pending events as pretty JSON (read-only).

    \b
    Example:
      moesif-flush peek -n 3 --queue /var/lib/app/moesif.sqlite
    """
    conn = ctx.connect_readonly()
    try:
        click.echo(json.dumps(qs.peek(conn, count), indent=2))
    finally:
        conn.close()


@command(cli)
@pass_ctx
def migrate(ctx: CliContext) -> None:
    """Create the queue file or upgrade its schema, then print the schema version.

    Not needed before `run` (which creates the file) or for the app (whose
    workers create it); useful to prepare a path and its permissions.

    \b
    Example:
      moesif-flush migrate --queue /var/lib/app/moesif.sqlite
    """
    conn = ctx.connect(create=True)
    try:
        click.echo(f"schema version {storage.schema_version(conn)} ({ctx.queue_path()})")
    finally:
        conn.close()
