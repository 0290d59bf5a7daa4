"""`fervid`: the one command line. Each command wires stages lazily, so `fervid --help` stays fast.

Commands live in the modules of this package by area; each registers itself on :data:`app`. Usage errors
(unknown command or option, missing argument, bad value or choice) are Typer's: a short usage message and exit
status 2. A :class:`FervidError` raised by a command is one line on stderr and its exit status. Neither is ever
a traceback.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from fervid.errors import FervidError
from fervid.logs import LogLevel, configure, log_format

app = typer.Typer(
    name="fervid",
    help="Streaming facial-expression analytics: cameras in, per-camera emotion timelines out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        out.print(f"fervid {version('fervid')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Streaming facial-expression analytics: cameras in, per-camera emotion timelines out."""


def main() -> None:
    """Entry point: Typer reports usage errors itself; a FervidError becomes one line and its exit code."""
    try:
        app()
    except FervidError as exc:
        if _json_logging():
            logging.getLogger("fervid").error("%s", exc)
        else:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _json_logging() -> bool:
    try:
        return log_format() == "json"
    except FervidError:
        return False


def setup_logging(log_level: LogLevel | None, verbose: bool = False, *, service: bool = False) -> None:
    """Configure logging for a command: ``--log-level`` (or FERVID_LOG_LEVEL), ``-v`` for info, else INFO for
    services (they say what they loaded and do) and WARNING for the rest."""
    configure(log_level or ("info" if verbose or service else "warning"))


Command = Callable[..., None]


def command(
    name: str | None = None, *, service: bool = False, on: typer.Typer | None = None
) -> Callable[[Command], Command]:
    """Register a command on `app` (or the group `on`) with --log-level and -v after its own options: they set up
    logging before it runs (`setup_logging`; services log at info by default), so no command spells them."""

    def register(fn: Command) -> Command:
        (on or app).command(name)(_LoggingOptions(fn, service=service))
        return fn

    return register


class _LoggingOptions:
    """`fn` as a Typer callback with --log-level and -v appended to its options. Typer reads a callback's options
    from its signature, here built with the annotations already evaluated, so it needs no type hints."""

    def __init__(self, fn: Command, *, service: bool) -> None:
        from fervid.cli.options import LogLevelOption, Verbose

        functools.update_wrapper(self, fn)  # name (the command's), docstring (its help)
        self._fn, self._service = fn, service
        own = inspect.signature(fn, eval_str=True)
        logging_options = [
            inspect.Parameter("log_level", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=LogLevelOption),
            inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Verbose),
        ]
        self.__signature__ = own.replace(parameters=[*own.parameters.values(), *logging_options])
        self.__annotations__: dict[str, Any] = {}

    def __call__(self, *args: Any, log_level: LogLevel | None = None, verbose: bool = False, **kwargs: Any) -> None:
        setup_logging(log_level, verbose, service=self._service)
        self._fn(*args, **kwargs)


def _register_commands() -> None:
    import importlib

    # Each module registers its commands on `app` when imported: classifier (train, evaluate, compare, export),
    # demo (demo, timeline), ingest (ingest, cameras), services (detect, classify, stages, ingest-files), storage
    # (store, migrate, prune, api, grafana), up (up).
    for module in ("classifier", "demo", "ingest", "services", "storage", "up"):
        importlib.import_module(f"fervid.cli.{module}")


_register_commands()
