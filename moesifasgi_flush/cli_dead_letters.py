"""`moesif-flush dead-letters`: events (and profiles) Moesif refused or that were too old.

`list` and `show` are read-only; `requeue` and `purge` change the queue and say
so when an id names no dead letter (a warning and exit 1, after doing the rest).
"""
from __future__ import annotations

import json
import sys
from typing import List, Optional, Tuple

import click

from moesifasgi.storage import queue_store as qs

from .cli import CliContext, cli, command, pass_ctx
from .cli_format import ago


@cli.group("dead-letters")
def dead_letters() -> None:
    """List, show, requeue or purge events Moesif refused or that were too old to send.

    \b
    Example:
      moesif-flush dead-letters list --reason 400
      moesif-flush dead-letters show 12
      moesif-flush dead-letters requeue 12 13
    """


@command(dead_letters, "list")
@click.option("-n", "--limit", "count", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many (one page).")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="Skip this many first (the next page: --offset 50).")
@click.option("--reason", metavar="TEXT", default=None,
              help="Only those whose reason or HTTP status contains TEXT (case-insensitive).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_ctx
def dead_letters_list(ctx: CliContext, count: int, offset: int, reason: Optional[str], as_json: bool) -> None:
    """List dead letters, oldest first, with their status and reason (read-only).

    \b
    Example:
      moesif-flush dead-letters list -n 20 --offset 20 --reason "HTTP 400" --json
    """
    conn = ctx.connect_readonly()
    try:
        rows = qs.list_dead_letters(conn, count, offset=offset, reason=reason)
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dead letters" + (" match" if reason else "") + (" on this page" if offset else ""))
    for row in rows:
        kind = "" if row["kind"] in (None, "event") else f" [{row['kind']}]"
        click.echo(f"{row['id']:>6}  {row['transaction_id']}{kind}  status={row['status'] or '-'}  {row['reason']}")
    if len(rows) == count:
        click.echo(f"(more may follow: --offset {offset + count})", err=True)


@command(dead_letters, "show")
@click.argument("dead_letter_id", metavar="ID", type=int)
@pass_ctx
def dead_letters_show(ctx: CliContext, dead_letter_id: int) -> None:
    """Print one dead letter with its stored event as pretty JSON (read-only).

    \b
    Example:
      moesif-flush dead-letters show 12
    """
    conn = ctx.connect_readonly()
    try:
        found = qs.get_dead_letter(conn, dead_letter_id)
    finally:
        conn.close()
    if found is None:
        raise click.ClickException(f"no dead letter with id {dead_letter_id} (see `moesif-flush dead-letters list`)")
    click.echo(f"# failed {ago(found['failed_at'])}: {found['reason']}", err=True)
    click.echo(json.dumps(found, indent=2))


def _unknown(conn: object, ids: Tuple[int, ...]) -> List[int]:
    return qs.missing_dead_letter_ids(conn, list(ids)) if ids else []  # type: ignore[arg-type]


def _warn_unknown(unknown: List[int]) -> None:
    if unknown:
        raise click.ClickException(f"no dead letter with id {', '.join(map(str, unknown))}")


@command(dead_letters, "requeue")
@click.argument("ids", nargs=-1, type=int)
@pass_ctx
def dead_letters_requeue(ctx: CliContext, ids: Tuple[int, ...]) -> None:
    """Put dead letters back in the queue (all of them when no ID is given).

    Ids that name no dead letter are reported and make the exit status 1
    (the others are still requeued).

    \b
    Example:
      moesif-flush dead-letters requeue        # all
      moesif-flush dead-letters requeue 4 7    # two of them
    """
    from moesifasgi.delivery.profile_delivery import requeue_profile_dead_letters  # httpx: only here

    conn = ctx.connect()
    try:
        unknown = _unknown(conn, ids)
        moved = qs.requeue_dead_letters(conn, list(ids) if ids else None)
        profiles = requeue_profile_dead_letters(conn, list(ids) if ids else None)
    finally:
        conn.close()
    click.echo(f"requeued {moved} events" + (f" and {profiles} profiles" if profiles else ""))
    _warn_unknown(unknown)


@command(dead_letters, "purge")
@click.argument("ids", nargs=-1, type=int)
@click.option("--yes", is_flag=True, help="Do not ask. Required when stdin is not a terminal (scripts).")
@pass_ctx
def dead_letters_purge(ctx: CliContext, ids: Tuple[int, ...], yes: bool) -> None:
    """Delete dead letters for good (all of them when no ID is given).

    Asks first on a terminal; in a script (no terminal) it refuses unless
    --yes is given. Unknown ids are reported with exit status 1.

    \b
    Example:
      moesif-flush dead-letters purge --yes
    """
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("refusing to purge without --yes: no terminal to ask on")
        if not click.confirm(f"Delete {'these' if ids else 'all'} dead letters?"):
            raise click.ClickException("nothing deleted")
    conn = ctx.connect()
    try:
        unknown = _unknown(conn, ids)
        removed = qs.purge_dead_letters(conn, list(ids) if ids else None)
    finally:
        conn.close()
    click.echo(f"purged {removed} dead letters")
    _warn_unknown(unknown)

