"""One long-running process per stage: `fervid detect`, `fervid classify`, `fervid store`, and
`fervid ingest-files` (file sources, for `fervid up` and tests; cameras are `fervid ingest --config`).

Each is configured by ``FERVID_*`` (what compose and `fervid up` set), overridden by its flags; each runs the
real worker loop, serves ``/metrics``, ``/health`` and ``/ready`` on ``--metrics-port``, and stops within
seconds of SIGTERM: the batch in hand is finished and acked, or, when it cannot finish (a full downstream),
left pending for another replica. A second SIGTERM exits at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fervid.cli import DataDir, RedisUrl, Verbose, _setup_logging, app
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


def serve_stage(
    service: str,
    group: str,
    settings: Any,
    build_stage: Callable[[Any, Any], Any],
    *,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
    bus_metrics: bool = False,
) -> tuple[Any, Any]:
    """Connect, start the health server, build the stage (loads the model), run the loop until SIGTERM.

    `bus_metrics`: this process exports the bus's series (fervid.metrics.BusCollector); exactly one does."""
    from fervid.bus import Bus, connect
    from fervid.metrics import HealthServer, register_bus_collector
    from fervid.worker import StopFlag, run_stage

    if not settings.redis_url:
        raise ConfigError(f"{service} needs a shared Redis: set FERVID_REDIS_URL or pass --redis")
    # Until the model is loaded nothing is in flight: SIGTERM/Ctrl-C exits at once (exit 0) instead of
    # waiting for a slow model load. From the first read on, the worker loop's graceful handlers apply.
    _exit_now_on_signal()
    stop = StopFlag()
    client = connect(settings.redis_url)
    health = HealthServer(service, settings.metrics_port)
    loaded: dict[str, Any] = {}
    health.add_check("redis", lambda: None if client.ping() else "no PONG")
    health.add_check("model", lambda: None if loaded else "loading")
    if bus_metrics:
        register_bus_collector(client)
    health.start()  # /health answers while the model loads; /ready only once it is loaded
    try:
        bus = Bus(client, group, claim_idle_ms=settings.bus.claim_idle_ms, max_deliveries=settings.bus.max_deliveries)
        stage = build_stage(bus, stop)
        loaded["stage"] = stage
        stop.install_signal_handlers()
        log.info("%s: ready", service)
        stats = run_stage(
            stage, bus, stop=stop, block_ms=settings.bus.block_ms, max_messages=max_messages, idle_timeout=idle_timeout
        )
        return stats, stage
    finally:
        health.close()


def _exit_now_on_signal() -> None:
    import signal

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d while starting: exiting", signum)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


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
    from fervid.contracts import DETECTOR_GROUP
    from fervid.settings import load_settings

    settings = load_settings(
        redis_url=redis, data_dir=data_dir, metrics_port=metrics_port,
        detector__backend=detector, detector__device=device, detector__batch_size=batch_size,
    )  # fmt: skip

    def build(bus: Any, stop: Any) -> Any:
        from detector.registry import create_configured
        from detector.worker import DetectorStage

        cfg = settings.detector
        model = create_configured(cfg.backend, device=cfg.device, min_face=cfg.min_face)
        log.info("detector: %s on %s", cfg.backend, getattr(model, "device", "cpu"))
        return DetectorStage(bus, model, settings, stop.is_set)

    serve_stage("detector", DETECTOR_GROUP, settings, build)


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
    from fervid.contracts import CLASSIFIER_GROUP
    from fervid.settings import load_settings

    settings = load_settings(
        redis_url=redis, data_dir=data_dir, metrics_port=metrics_port, classifier__model=model,
        classifier__checkpoint=checkpoint, classifier__device=device, classifier__batch_size=batch_size,
        classifier__compile=compile,
    )  # fmt: skip

    def build(bus: Any, stop: Any) -> Any:
        from classifier.serving import load_classifier
        from classifier.worker import ClassifierStage

        cfg = settings.classifier
        classifier = load_classifier(
            cfg.model, cfg.checkpoint, cfg.device, compile=cfg.compile, max_crops=cfg.max_crops
        )
        log.info("classifier: %s on %s", classifier.model_id, classifier.device)
        return ClassifierStage(bus, classifier, settings, stop.is_set)

    serve_stage("classifier", CLASSIFIER_GROUP, settings, build)


@app.command("ingest-files")
def ingest_files(
    sources: Annotated[list[str], typer.Argument(help="Video files (or URLs) to publish once through.")],
    camera: Annotated[
        list[str] | None, typer.Option("--camera", help="Camera name per source (default: file stem).")
    ] = None,
    fps: Annotated[float | None, typer.Option(help="Analysis rate in frames/s (default: every frame).")] = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds of video.")] = None,
    redis: RedisUrl = None,
    metrics_port: MetricsPort = None,
    verbose: Verbose = False,
) -> None:
    """Publish the frames of video files onto the bus once, then exit (cameras: `fervid ingest --config`)."""
    _setup_logging(verbose)
    from fervid.bus import Bus, connect
    from fervid.cli.demo import _default_camera_name
    from fervid.contracts import validate_camera_name
    from fervid.metrics import HealthServer
    from fervid.settings import load_settings
    from fervid.worker import StopFlag
    from ingest.runner import SourceSpec, run_source

    settings = load_settings(redis_url=redis, metrics_port=metrics_port)
    if not settings.redis_url:
        raise ConfigError("ingest-files needs a shared Redis: set FERVID_REDIS_URL or pass --redis")
    names = list(camera or [])
    if names and len(names) != len(sources):
        raise ConfigError(f"{len(names)} --camera names for {len(sources)} sources: give one per source or none")
    # Until the model is loaded nothing is in flight: SIGTERM/Ctrl-C exits at once (exit 0) instead of
    # waiting for a slow model load. From the first read on, the worker loop's graceful handlers apply.
    _exit_now_on_signal()
    stop = StopFlag()
    client = connect(settings.redis_url)
    health = HealthServer("ingest", settings.metrics_port)
    health.add_check("redis", lambda: None if client.ping() else "no PONG")
    health.start()
    bus = Bus(client, "ingest")
    try:
        for i, url in enumerate(sources):
            name = names[i] if names else _default_camera_name(url, i)
            try:
                validate_camera_name(name)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            counters = run_source(
                bus, SourceSpec(name, url, fps=fps, seconds=seconds), settings, should_stop=stop.is_set
            )
            log.info("%s: published %d frames (%d dropped)", name, counters.published, counters.dropped)
            if stop.is_set():
                break
    finally:
        health.close()
