"""The options several commands share, defined once: each command names them in its signature
(``redis: RedisUrl = None``), so a flag reads and validates the same wherever it appears."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fervid.choices import ClassifierModel, DetectorBackend, Device
from fervid.logs import LEVEL_ENV, LogLevel

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
Cameras = Annotated[list[str] | None, typer.Option("--camera", help="Camera name per source (default: file stem).")]
ServedModel = Annotated[
    ClassifierModel | None, typer.Option(help="Emotion classifier model (env FERVID_CLASSIFIER__MODEL).")
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="A best.pt written by `fervid train`; overrides --model (env FERVID_CLASSIFIER__CHECKPOINT).",
    ),
]
BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Messages per batch.")]
