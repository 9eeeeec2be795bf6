"""`moesif-flush`: drain and inspect the Moesif queue file from a shell.

A thin click layer over the library. The commands live in small modules by
concern (`cli_drain`: run and drain; `cli_inspect`: status, check, queues,
peek; `cli_dead_letters`); this one holds the group, the options every command
shares, and the one place where errors become one line and an exit code:

    0    success (check: healthy)
    1    the command failed or check found a problem (one line on stderr says which)
    2    usage error: unknown option, bad value
    130  interrupted (Ctrl-C, or SIGTERM during drain)
"""
from __future__ import annotations

import importlib
import logging
import os
import sqlite3
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple
from urllib.parse import urlsplit

import click

from moesifasgi import storage
from moesifasgi._version import __version__
from moesifasgi.queue_location import UnsafeQueueLocation, default_queue_path, resolve_queue_path
from moesifasgi.settings import DEFAULT_BASE_URI

from .cli_logging import configure_logging

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


class Interrupted(click.ClickException):
    """Ctrl-C: exit 130 (128 + SIGINT), as shells expect, never 0."""
    exit_code = EXIT_INTERRUPTED


@dataclass
class CliContext:
    queue: Optional[str] = None
    application_id: Optional[str] = None
    base_uri: str = DEFAULT_BASE_URI
    log_level: str = "INFO"
    log_format: str = "text"
    # (path, device and inode) of the queue file a command opened, so that damage
    # met mid-command moves that very file aside (see _Group.invoke).
    opened: Optional[Tuple[str, Tuple[int, int]]] = None

    def queue_source(self) -> Tuple[str, str]:
        """(path, how it was chosen), for messages that must say where a path came from."""
        if self.queue:
            try:  # "~" expanded from HOME or the passwd entry, never kept as a directory name
                return resolve_queue_path(self.queue, ""), "--queue / MOESIF_QUEUE_PATH"
            except UnsafeQueueLocation as exc:
                raise click.ClickException(str(exc)) from exc
        if self.application_id:
            try:
                path = default_queue_path(self.application_id)
            except UnsafeQueueLocation as exc:
                raise click.ClickException(str(exc)) from exc
            return path, f"derived from the application id and the working directory {os.getcwd()}"
        raise click.ClickException(
            "no queue file given: pass --queue PATH (or set MOESIF_QUEUE_PATH), or --application-id "
            "to use the default location (`moesif-flush queues` lists the files there)")

    def queue_path(self) -> str:
        return self.queue_source()[0]

    def require_application_id(self) -> str:
        if not self.application_id:
            raise click.ClickException("an application id is needed to post to Moesif: "
                                       "pass --application-id or set MOESIF_APPLICATION_ID")
        return self.application_id

    def require_base_uri(self) -> str:
        """The collector address, checked before anything is posted: a typo must be
        one clear error, not a retry loop."""
        uri = self.base_uri.rstrip("/")
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.ClickException(
                f"--base-uri {self.base_uri!r} is not an http:// or https:// URL with a host "
                f"(the default is {DEFAULT_BASE_URI})")
        try:
            parts.port
        except ValueError as exc:
            raise click.ClickException(f"--base-uri {self.base_uri!r}: {exc}") from exc
        return uri

    def _missing_hint(self, exc: Exception) -> str:
        if "no queue file" not in str(exc):
            return ""
        if self.queue:
            return " (is MOESIF_QUEUE_PATH the same as the app's?)"
        return (f" (the path is derived from the application id and the working directory {os.getcwd()}; "
                "run this from the app's directory, or see `moesif-flush queues`)")

    def connect(self, create: bool = False) -> sqlite3.Connection:
        """A read-write connection (migrates the file); for commands that change the queue."""
        path = self.queue_path()
        if os.path.isdir(path):
            raise click.ClickException(f"{path} is a directory, not a queue file")
        try:
            conn = storage.connect(path, create=create)
            self._opened(path)
            return conn
        except UnsafeQueueLocation as exc:
            raise click.ClickException(str(exc)) from exc
        except storage.QueueError as exc:
            raise click.ClickException(f"{exc}{self._missing_hint(exc)}") from exc

    def _opened(self, path: str) -> None:
        identity = storage.file_identity(path)
        self.opened = (path, identity) if identity is not None else None

    def connect_readonly(self) -> sqlite3.Connection:
        """For commands that only look: the file is never created, migrated or written."""
        try:
            conn = storage.connect_readonly(self.queue_path())
            self._opened(self.queue_path())
            return conn
        except storage.QueueError as exc:
            raise click.ClickException(f"{exc}{self._missing_hint(exc)}") from exc


pass_ctx = click.make_pass_decorator(CliContext, ensure=True)


def _setter(field: str, transform: Callable[[Any], Any] = lambda v: v) -> Callable[..., None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None:
            return
        obj = ctx.ensure_object(CliContext)
        setattr(obj, field, transform(value))
        if field in ("log_level", "log_format"):
            configure_logging(obj.log_level, obj.log_format)
    return callback


def _app_id(value: str) -> Optional[str]:
    return value.strip() or None


_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
# (flags, envvar, field, transform, extra click arguments, help)
_SHARED = [
    (("--queue",), "MOESIF_QUEUE_PATH", "queue", str,
     {"metavar": "PATH"}, "Queue file [env MOESIF_QUEUE_PATH; default: derived from the application id "
                          "and the working directory, see `moesif-flush queues`]."),
    (("--application-id",), "MOESIF_APPLICATION_ID", "application_id", _app_id,
     {"metavar": "ID"}, "Moesif application id [env MOESIF_APPLICATION_ID]."),
    (("--base-uri",), "MOESIF_BASE_URI", "base_uri", str,
     {"metavar": "URL"}, f"Moesif collector [env MOESIF_BASE_URI; default {DEFAULT_BASE_URI}]."),
    (("--log-level",), None, "log_level", str.upper,
     {"type": _LEVELS}, "Level of the messages printed to stderr [default INFO]."),
    (("--log-format",), "MOESIF_LOG_FORMAT", "log_format", str.lower,
     {"type": click.Choice(["text", "json"], case_sensitive=False)},
     "text, or json: one JSON object a line, for log collectors [env MOESIF_LOG_FORMAT]."),
]


def _shared_options(*, group: bool) -> Callable[[Any], Any]:
    """The options every command takes, before the command name or after it.

    On the group they also read their environment variables; on a command they
    only override what the group got, so `moesif-flush status --queue X` and
    `moesif-flush --queue X status` mean the same.
    """
    def decorate(fn: Any) -> Any:
        for flags, envvar, field, transform, extra, help_text in reversed(_SHARED):
            fn = click.option(*flags, envvar=envvar if group else None, expose_value=False,
                              callback=_setter(field, transform), help=help_text, **extra)(fn)
        return fn
    return decorate


def command(group: click.Group, name: Optional[str] = None, **kwargs: Any) -> Callable[[Any], Any]:
    """`@group.command` that also accepts the shared options after the command name."""
    def decorate(fn: Any) -> Any:
        return group.command(name, **kwargs)(_shared_options(group=False)(fn))
    return decorate


class _UsageError(click.UsageError):
    """A usage error in one line (click's own adds the usage and a "Try --help" line)."""

    def show(self, file: Any = None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"Error: {self.message}{hint}", err=True)


def _one_line(exc: click.UsageError) -> _UsageError:
    return exc if isinstance(exc, _UsageError) else _UsageError(exc.format_message(), exc.ctx)


# Command name -> the module that defines it, imported when the command is used:
# `status` and `check` (probes, every few seconds) need neither httpx nor asyncio,
# which `run` and `drain` bring.
_COMMAND_MODULES = {
    "run": "cli_drain", "drain": "cli_drain",
    "status": "cli_inspect", "check": "cli_inspect", "queues": "cli_inspect", "peek": "cli_inspect",
    "migrate": "cli_inspect", "dead-letters": "cli_dead_letters",
}


class _Group(click.Group):
    """Every failure below becomes one line and a non-zero exit, never a traceback."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name not in self.commands and cmd_name in _COMMAND_MODULES:
            importlib.import_module(f"{__package__}.{_COMMAND_MODULES[cmd_name]}")  # registers it
        return super().get_command(ctx, cmd_name)

    def make_context(self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from exc
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except KeyboardInterrupt as exc:
            raise Interrupted("interrupted") from exc
        except (sqlite3.Error, storage.QueueError) as exc:
            moved = _move_aside_if_damaged(ctx, exc)
            if moved:
                raise click.ClickException(
                    f"the queue file is damaged ({exc}); it was moved to {moved} and a new queue starts: "
                    "the flusher delivers what can still be read from it") from exc
            raise click.ClickException(f"queue file error: {exc}") from exc
        except UnsafeQueueLocation as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from exc
        except Exception as exc:
            logger.debug("unexpected error", exc_info=True)
            raise click.ClickException(
                f"unexpected error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for details)") from exc


def _move_aside_if_damaged(ctx: click.Context, exc: BaseException) -> Optional[str]:
    """Damage met mid-command in a file that opened as our queue: move it aside, as
    a worker or the flusher would, so that delivery resumes on a fresh file.
    Never for a file that failed to open (a typo'd --queue naming another file)."""
    obj = ctx.find_object(CliContext)
    if obj is None or obj.opened is None or not storage.is_damaged(exc):
        return None
    path, identity = obj.opened
    try:
        return storage.quarantine(path, identity)
    except OSError:
        return None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="moesif-flush",
                      message="%(prog)s (moesifasgi) %(version)s")
@_shared_options(group=True)
def cli() -> None:
    """Drain and inspect the queue that moesifasgi workers write API calls to.

    These options may also follow the command name. Exit codes: 0 success,
    1 failure or unhealthy (one line says why), 2 usage error, 130 interrupted.

    \b
    Example:
      export MOESIF_APPLICATION_ID=... MOESIF_QUEUE_PATH=/var/lib/app/moesif.sqlite
      moesif-flush status
    """
    obj = click.get_current_context().ensure_object(CliContext)
    configure_logging(obj.log_level, obj.log_format)


def main() -> None:
    """Console-script entry point (`moesif-flush`)."""
    try:
        cli.main(prog_name="moesif-flush")
    except KeyboardInterrupt:  # raised outside a command (while parsing): still one line
        click.echo("Error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    # Run as `python -m moesifasgi_flush.cli`: the commands registered themselves on
    # the imported module's group, not on this __main__ copy.
    from moesifasgi_flush.cli import main as _main
    _main()
