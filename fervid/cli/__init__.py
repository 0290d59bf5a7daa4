"""`fervid`: the one command line. Each command wires stages lazily, so `fervid --help` stays fast.

Commands live in the modules of this package by area; each registers itself on :data:`app`. Usage errors
(unknown command or option, missing argument, bad value or choice) are Typer's: a short usage message and exit
status 2. A :class:`FervidError` raised by a command is one line on stderr and its exit status. Neither is ever
a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fervid.choices import DetectorBackend, Device
from fervid.errors import FervidError
from fervid.logs import LEVEL_ENV, LogLevel, configure, log_format

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


LogLevelOption = Annotated[
    LogLevel | None,
    typer.Option(
        "--log-level",
        envvar=LEVEL_ENV,
        case_sensitive=False,
        help="Default: info for services, warning otherwise. FERVID_LOG_FORMAT=json logs JSON lines.",
        show_default=False,
    ),
]
Verbose = Annotated[bool, typer.Option("-v", help="Short for --log-level info.")]
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
DetectorOption = Annotated[
    DetectorBackend | None, typer.Option("--detector", help="Face detector backend (env FERVID_DETECTOR__BACKEND).")
]
DeviceOption = Annotated[Device | None, typer.Option("--device", help="Where the model runs (auto: CUDA if present).")]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve /metrics, /health and /ready on this port; 0 = off (env FERVID_METRICS_PORT).",
    ),
]


def positive(value: float | None) -> float | None:
    """Option callback: a rate or a duration must be above zero."""
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value:g} is not above 0")
    return value


Fps = Annotated[
    float | None,
    typer.Option(callback=positive, help="Analysis rate in frames/s (default: every frame of a file)."),
]
Seconds = Annotated[float | None, typer.Option(callback=positive, help="Stop after this many seconds of video.")]
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
