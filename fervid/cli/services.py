"""One long-running process per stage: `fervid detect`, `fervid classify`, `fervid store`, and
`fervid ingest-files` (file sources, for `fervid up` and tests; cameras are `fervid ingest --config`).

Each is configured by ``FERVID_*`` (what compose and `fervid up` set), overridden by its flags; each runs the
real worker loop, serves ``/metrics``, ``/health`` and ``/ready`` on ``--metrics-port``, and stops within
seconds of SIGTERM: the batch in hand is finished and acked, or, when it cannot finish (a full downstream),
left pending for another replica. A second SIGTERM exits at once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fervid.cli import command
from fervid.cli.options import (
    BatchSize,
    Cameras,
    CheckpointOption,
    DataDir,
    DetectorOption,
    DeviceOption,
    Fps,
    MetricsPort,
    RedisUrl,
    Seconds,
    ServedModel,
    StartTime,
)
from fervid.errors import ConfigError
from fervid.logs import format_config

if TYPE_CHECKING:
    from fervid.worker import LoopStats, Stage

log = logging.getLogger(__name__)


def serve_stage(
    name: str, *, max_messages: int | None = None, idle_timeout: float | None = None, **flags: Any
) -> tuple[LoopStats, Stage[Any]]:
    """`fervid <stage>`: stage `name` as a service, configured by FERVID_* overridden by the command's `flags`
    (settings keys; None = not given)."""
    from fervid.settings import load_settings
    from fervid.stages import serve, stage_entry

    return serve(stage_entry(name), load_settings(**flags), max_messages=max_messages, idle_timeout=idle_timeout)


@command(service=True)
def detect(
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    detector: DetectorOption = None,
    device: DeviceOption = None,
    batch_size: BatchSize = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Detector worker: frames → faces. Run N replicas; each camera is leased to one of them (detector/README.md)."""
    serve_stage(
        "detector",
        redis_url=redis,
        data_dir=data_dir,
        metrics_port=metrics_port,
        detector__backend=detector,
        detector__device=device,
        detector__batch_size=batch_size,
    )


@command(service=True)
def classify(
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    model: ServedModel = None,
    checkpoint: CheckpointOption = None,
    device: DeviceOption = None,
    batch_size: BatchSize = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the model at start-up (env FERVID_CLASSIFIER__COMPILE): ~2x on CPU; "
            "needs a C++ compiler.",
        ),
    ] = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Classifier worker: faces → emotion events, crops batched across frames and cameras. Scales by replicas."""
    serve_stage(
        "classifier",
        redis_url=redis,
        data_dir=data_dir,
        metrics_port=metrics_port,
        classifier__model=model,
        classifier__checkpoint=checkpoint,
        classifier__device=device,
        classifier__batch_size=batch_size,
        classifier__compile=compile,
    )


@command("stages", service=True)
def stages_command(
    names: Annotated[
        list[str], typer.Argument(help="Stages to run together: detector, classifier, storage (any of them).")
    ],
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Several stages in one process, each on a thread, sharing one torch pool: `fervid up --one-process` on a
    machine with few cores. Configured by FERVID_* like the one-stage commands; one /health and /ready for all."""
    from fervid.settings import load_settings
    from fervid.stages import serve_stages, stage_entry

    settings = load_settings(redis_url=redis, data_dir=data_dir, metrics_port=metrics_port)
    entries = [stage_entry(name) for name in dict.fromkeys(names)]
    serve_stages(entries, settings)


@command("ingest-files", service=True)
def ingest_files(
    sources: Annotated[list[str], typer.Argument(help="Video files (or URLs) to publish once through.")],
    camera: Cameras = None,
    fps: Fps = None,
    seconds: Seconds = None,
    start_time: StartTime = None,
    redis: RedisUrl = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Publish the frames of video files onto the bus once, then exit (cameras: `fervid ingest --config`).

    Riding out a Redis outage of any length, at start too: it waits for Redis, and publishing goes on where it was.
    """
    from fervid.bus import Bus, connect_waiting
    from fervid.metrics import serve_health
    from fervid.settings import load_settings
    from fervid.signals import exit_now_on_signal
    from fervid.worker import StopFlag
    from ingest.runner import run_source, source_specs

    settings = load_settings(redis_url=redis, metrics_port=metrics_port)
    if not settings.redis_url:
        raise ConfigError("ingest-files needs a shared Redis: set FERVID_REDIS_URL or pass --redis")
    specs = source_specs(sources, camera, fps=fps, seconds=seconds, start_time=start_time)
    config = {**settings.describe("ingest"), "sources": len(specs), "fps": fps, "seconds": seconds}
    log.info("ingest-files: starting with %s", format_config(config), extra={"config": config})
    exit_now_on_signal()  # nothing is published yet: SIGTERM while waiting for Redis exits at once
    stop = StopFlag()
    client = connect_waiting(settings.redis_url, "ingest-files")  # `fervid up` starts it once: it must not give up
    health = serve_health("ingest", settings.metrics_port, client, settings.keys)
    bus = Bus.from_settings(client, "ingest", settings)
    # Before the first file is opened: from here a SIGTERM only asks the reading to stop, and the command ends as
    # it does at the end of its files. An exception raised on this thread while a reader thread is inside FFmpeg
    # aborts the process ("FATAL: exception not rethrown") as the interpreter exits.
    stop.install_signal_handlers()
    started, published, dropped = time.monotonic(), 0, 0
    try:
        for spec in specs:
            counters = run_source(bus, spec, settings, should_stop=stop.is_set)
            published, dropped = published + counters.published, dropped + counters.dropped
            log.info("%s: published %d frames (%d dropped)", spec.camera, counters.published, counters.dropped)
            if stop.is_set():
                break
    finally:
        health.close()
    log.info(
        "ingest-files: published %d frames (%d dropped) from %d file(s) in %.1f s",
        published,
        dropped,
        len(specs),
        time.monotonic() - started,
    )
