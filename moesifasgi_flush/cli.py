"""`moesif-flush`: drain and inspect the Moesif queue file from a shell.

A thin click layer over the library: every command opens the queue, calls a
`queue_store`/`Flusher` function and prints. Expected problems (no file, wrong
path, no application id) become one-line errors with a non-zero exit.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import click

from moesifasgi import storage
from moesifasgi.settings import DEFAULT_BASE_URI, resolve_queue_path

from . import queue_store as qs
from .profile_delivery import requeue_profile_dead_letters
from .cli_drain import drain, run
from .status import queue_status

logger = logging.getLogger(__name__)


@dataclass
class _Context:
    queue: Optional[str]
    application_id: Optional[str]
    base_uri: str

    def queue_path(self) -> str:
        if self.queue:
            return os.path.abspath(os.path.expanduser(self.queue))
        if self.application_id:
            return resolve_queue_path(None, self.application_id)
        raise click.ClickException(
            "no queue file given: pass --queue PATH (or set MOESIF_QUEUE_PATH), "
            "or --application-id to use the default location")

    def require_application_id(self) -> str:
        if not self.application_id:
            raise click.ClickException("an application id is needed to post to Moesif: "
                                       "pass --application-id or set MOESIF_APPLICATION_ID")
        return self.application_id

    def connect(self, create: bool = False) -> sqlite3.Connection:
        path = self.queue_path()
        if os.path.isdir(path):
            raise click.ClickException(f"{path} is a directory, not a queue file")
        try:
            return storage.connect(path, create=create)
        except storage.QueueError as exc:
            hint = " (run `moesif-flush migrate` to create it)" if "no queue file" in str(exc) else ""
            raise click.ClickException(f"{exc}{hint}") from exc

    def connect_readonly(self) -> sqlite3.Connection:
        """For commands that only look: the file is never created, migrated or written."""
        try:
            return storage.connect_readonly(self.queue_path())
        except storage.QueueError as exc:
            hint = " (run `moesif-flush migrate` to create it)" if "no queue file" in str(exc) else ""
            raise click.ClickException(f"{exc}{hint}") from exc


pass_ctx = click.make_pass_decorator(_Context)


class _Group(click.Group):
    """Turns database errors met mid-command into one-line errors too."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (sqlite3.Error, storage.QueueError) as exc:
            raise click.ClickException(f"queue file error: {exc}") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--queue", envvar="MOESIF_QUEUE_PATH", metavar="PATH",
              help="Queue file [env MOESIF_QUEUE_PATH; default: derived from the application id].")
@click.option("--application-id", envvar="MOESIF_APPLICATION_ID", metavar="ID",
              help="Moesif application id [env MOESIF_APPLICATION_ID].")
@click.option("--base-uri", envvar="MOESIF_BASE_URI", default=DEFAULT_BASE_URI, show_default=True,
              help="Moesif collector [env MOESIF_BASE_URI].")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True, help="Log level of the messages printed to stderr.")
@click.pass_context
def cli(ctx: click.Context, queue: Optional[str], application_id: Optional[str], base_uri: str,
        log_level: str) -> None:
    """Drain and inspect the queue that moesifasgi workers write API calls to.

    \b
    Example:
      export MOESIF_APPLICATION_ID=... MOESIF_QUEUE_PATH=/var/lib/app/moesif.sqlite
      moesif-flush status
    """
    _configure_logging(log_level.upper())
    ctx.obj = _Context(queue, (application_id or "").strip() or None, base_uri.rstrip("/"))


def _configure_logging(level: str) -> None:
    # The CLI is an application: it owns the root handler (the library never does).
    root = logging.getLogger()
    if not any(getattr(h, "_moesif_flush", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._moesif_flush = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO: thousands of lines a second while draining.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def status(ctx: _Context, as_json: bool) -> None:
    """Show pending events, in-flight claims, dead letters, the leader and the last outcomes.

    \b
    Example:
      moesif-flush --queue /var/lib/app/moesif.sqlite status --json
    """
    conn = ctx.connect_readonly()
    try:
        info = queue_status(conn, ctx.queue_path())
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
        return
    for key, value in info.items():
        click.echo(f"{key + ':':<22}{_human(key, value)}")


def _human(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "leader":
        return f"pid {value['pid']} on {value['host']} since {_when(value['since'])}"
    if key == "last_success_at" and isinstance(value, (int, float)):
        return _when(value)
    if key == "problems" and isinstance(value, dict):
        return ", ".join(f"{reason}={count}" for reason, count in value.items()) or "-"
    if key == "last_error" and isinstance(value, dict):
        return f"{_when(value.get('at') or 0)}: {value.get('error') or value.get('outcome')}"
    return str(value)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({time.time() - ts:.0f} s ago)"


@cli.command()
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many events.")
@pass_ctx
def peek(ctx: _Context, count: int) -> None:
    """Print the next N pending events as pretty JSON (nothing is changed).

    \b
    Example:
      moesif-flush --queue /var/lib/app/moesif.sqlite peek -n 3
    """
    conn = ctx.connect_readonly()
    try:
        click.echo(json.dumps(qs.peek(conn, count), indent=2))
    finally:
        conn.close()


@cli.command()
@pass_ctx
def migrate(ctx: _Context) -> None:
    """Create the queue file or upgrade its schema, then print the schema version.

    \b
    Example:
      moesif-flush --queue /var/lib/app/moesif.sqlite migrate
    """
    conn = ctx.connect(create=True)
    try:
        click.echo(f"schema version {storage.schema_version(conn)} ({ctx.queue_path()})")
    finally:
        conn.close()


@cli.group("dead-letters")
def dead_letters() -> None:
    """List, requeue or purge events Moesif refused or that were too old to send.

    \b
    Example:
      moesif-flush dead-letters list
      moesif-flush dead-letters requeue 12 13
    """


@dead_letters.command("list")
@click.option("-n", "count", type=click.IntRange(min=1), default=50, show_default=True, help="How many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_ctx
def dead_letters_list(ctx: _Context, count: int, as_json: bool) -> None:
    """List dead letters with their status and reason.

    \b
    Example:
      moesif-flush dead-letters list -n 20 --json
    """
    conn = ctx.connect_readonly()
    try:
        rows = qs.list_dead_letters(conn, count)
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dead letters")
    for row in rows:
        click.echo(f"{row['id']:>6}  {row['transaction_id']}  status={row['status'] or '-'}  {row['reason']}")


@dead_letters.command("requeue")
@click.argument("ids", nargs=-1, type=int)
@pass_ctx
def dead_letters_requeue(ctx: _Context, ids: Tuple[int, ...]) -> None:
    """Put dead letters back in the queue (all of them when no ID is given).

    \b
    Example:
      moesif-flush dead-letters requeue        # all
      moesif-flush dead-letters requeue 4 7    # two of them
    """
    conn = ctx.connect()
    try:
        moved = qs.requeue_dead_letters(conn, list(ids) if ids else None)
        profiles = requeue_profile_dead_letters(conn, list(ids) if ids else None)
    finally:
        conn.close()
    click.echo(f"requeued {moved} events" + (f" and {profiles} profiles" if profiles else ""))


@dead_letters.command("purge")
@click.argument("ids", nargs=-1, type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def dead_letters_purge(ctx: _Context, ids: Tuple[int, ...], yes: bool) -> None:
    """Delete dead letters for good (all of them when no ID is given).

    \b
    Example:
      moesif-flush dead-letters purge --yes
    """
    conn = ctx.connect()
    try:
        if not yes and not click.confirm(f"Delete {'these' if ids else 'all'} dead letters?"):
            raise click.ClickException("nothing deleted")
        removed = qs.purge_dead_letters(conn, list(ids) if ids else None)
    finally:
        conn.close()
    click.echo(f"purged {removed} dead letters")


cli.add_command(drain)
cli.add_command(run)


def main() -> None:
    """Console-script entry point (`moesif-flush`)."""
    cli(prog_name="moesif-flush")


if __name__ == "__main__":
    main()
