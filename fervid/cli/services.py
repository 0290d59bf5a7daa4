"""One long-running process per stage: `fervid detect`, `fervid classify`, `fervid store`, and
`fervid ingest-files` (file sources, for `fervid up` and tests; cameras are `fervid ingest --config`).

Each is configured by ``FERVID_*`` (what compose and `fervid up` set), overridden by its flags; each runs the
real worker loop, serves ``/metrics``, ``/health`` and ``/ready`` on ``--metrics-port``, and stops within
seconds of SIGTERM: the batch in hand is finished and acked, or, when it cannot finish (a full downstream),
left pending for another replica. A second SIGTERM exits at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fervid.cli import DataDir, RedisUrl, StartTime, Verbose, _setup_logging, app
from fervid.errors import ConfigError

log = logging.getLogger(__name__)

MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port", help="Serve /metrics, /health and /ready on this port; 0 = off (env FERVID_METRICS_PORT)."
    ),
]
Device = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Messages per batch.")]


@app.command()
def detect(
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    detector: Annotated[str | None, typer.Option(help="Face detector backend (env FERVID_DETECTOR__BACKEND).")] = None,
    device: Device = None,
    batch_size: BatchSize = None,
    metrics_port: MetricsPort = None,
    verbose: Verbose = False,
) -> None:
    """Detector worker: frames → faces. Run N replicas; each camera is leased to one of them (detector/README.md)."""
    _setup_logging(verbose)
    from fervid.settings import load_settings
    from fervid.stages import serve, stage_entry

    settings = load_settings(
        redis_url=redis, data_dir=data_dir, metrics_port=metrics_port,
        detector__backend=detector, detector__device=device, detector__batch_size=batch_size,
    )  # fmt: skip

    serve(stage_entry("detector"), settings)


@app.command()
def classify(
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    model: Annotated[str | None, typer.Option(help="Emotion model (env FERVID_CLASSIFIER__MODEL).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A trained checkpoint; overrides --model.")] = None,
    device: Device = None,
    batch_size: BatchSize = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the model at start-up (env FERVID_CLASSIFIER__COMPILE): ~2x on CPU; needs a C++ compiler.",
        ),
    ] = None,
    metrics_port: MetricsPort = None,
    verbose: Verbose = False,
) -> None:
    """Classifier worker: faces → emotion events, crops batched across frames and cameras. Scales by replicas."""
    _setup_logging(verbose)
    from fervid.settings import load_settings
    from fervid.stages import serve, stage_entry

    settings = load_settings(
        redis_url=redis, data_dir=data_dir, metrics_port=metrics_port, classifier__model=model,
        classifier__checkpoint=checkpoint, classifier__device=device, classifier__batch_size=batch_size,
        classifier__compile=compile,
    )  # fmt: skip

    serve(stage_entry("classifier"), settings)


@app.command("ingest-files")
def ingest_files(
    sources: Annotated[list[str], typer.Argument(help="Video files (or URLs) to publish once through.")],
    camera: Annotated[
        list[str] | None, typer.Option("--camera", help="Camera name per source (default: file stem).")
    ] = None,
    fps: Annotated[float | None, typer.Option(help="Analysis rate in frames/s (default: every frame).")] = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds of video.")] = None,
    start_time: StartTime = None,
    redis: RedisUrl = None,
    metrics_port: MetricsPort = None,
    verbose: Verbose = False,
) -> None:
    """Publish the frames of video files onto the bus once, then exit (cameras: `fervid ingest --config`).

    Riding out a Redis outage of any length: publishing waits and goes on where it was.
    """
    _setup_logging(verbose)
    from fervid.bus import Bus, connect
    from fervid.metrics import serve_health
    from fervid.settings import load_settings
    from fervid.stages import exit_now_on_signal
    from fervid.worker import StopFlag
    from ingest.runner import run_source, source_specs

    settings = load_settings(redis_url=redis, metrics_port=metrics_port)
    if not settings.redis_url:
        raise ConfigError("ingest-files needs a shared Redis: set FERVID_REDIS_URL or pass --redis")
    specs = source_specs(sources, camera, fps=fps, seconds=seconds, start_time=start_time)
    exit_now_on_signal()
    stop = StopFlag()
    client = connect(settings.redis_url)
    health = serve_health("ingest", settings.metrics_port, client, settings.keys)
    bus = Bus.from_settings(client, "ingest", settings)
    try:
        for spec in specs:
            counters = run_source(bus, spec, settings, should_stop=stop.is_set)
            log.info("%s: published %d frames (%d dropped)", spec.camera, counters.published, counters.dropped)
            if stop.is_set():
                break
    finally:
        health.close()
