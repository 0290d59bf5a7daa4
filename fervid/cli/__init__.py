"""`fervid`: the one command line. Each command wires stages lazily, so `fervid --help` stays fast.

Commands live in the modules of this package by area; each registers itself on :data:`app`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fervid.errors import FervidError

app = typer.Typer(
    name="fervid",
    help="Streaming facial-expression analytics: cameras in, per-camera emotion timelines out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    """Entry point: a FervidError becomes one line on stderr and its exit code, never a traceback."""
    try:
        app(standalone_mode=False)
    except FervidError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(1) from None
        raise


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress of every stage to stderr.")]
DbUrl = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: SQLite under the data dir; env FERVID_DB_URL)."),
]
RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis", help="Redis URL, e.g. redis://localhost:6379/0 (default: an embedded Redis; env FERVID_REDIS_URL)."
    ),
]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where embedded Redis and SQLite live (default ./fervid-data).")
]
StartTime = Annotated[
    str | None,
    typer.Option(
        "--start-time",
        metavar="ISO-8601",
        help="When the video files were recorded, e.g. 2024-05-01T09:30:00Z (no zone: UTC): capture time = this + "
        "the frame's PTS. Default: each file's creation_time tag when it has one, else the time of this run; "
        "the log (-v) says which, per file.",
    ),
]


def _register_commands() -> None:
    from fervid.cli import (
        classifier,  # noqa: F401  (registers train, evaluate, compare, export)
        demo,  # noqa: F401  (registers demo, timeline)
        ingest,  # noqa: F401  (registers ingest, cameras)
        services,  # noqa: F401  (registers detect, classify, ingest-files)
        storage,  # noqa: F401  (registers store, migrate, prune, api, grafana)
        up,  # noqa: F401  (registers up)
    )


_register_commands()
