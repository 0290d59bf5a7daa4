"""`fervid up`: the distributed topology (ingest, N detectors, N classifiers, storage) as supervised OS
processes against one Redis and one database: embedded ones by default, yours with --redis/--db."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fervid.cli import DataDir, DbUrl, RedisUrl, Verbose, _setup_logging, app, console
from fervid.errors import ConfigError, FervidError


def _has_command(name: str) -> bool:
    import typer.main

    group = typer.main.get_command(app)
    return name in getattr(group, "commands", {})


@app.command()
def up(
    source: Annotated[
        list[str] | None, typer.Option("--source", help="A video file to ingest once (repeatable).")
    ] = None,
    camera: Annotated[
        list[str] | None, typer.Option("--camera", help="Camera name per --source (default: file stem).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="cameras.yaml for `fervid ingest --config` (live cameras).")
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Analysis rate of --source files in frames/s (default: every frame).")
    ] = None,
    detectors: Annotated[int, typer.Option("--detectors", min=1, help="Detector replicas.")] = 1,
    classifiers: Annotated[int, typer.Option("--classifiers", min=1, help="Classifier replicas.")] = 1,
    redis: RedisUrl = None,
    db: DbUrl = None,
    data_dir: DataDir = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="First metrics port; worker i gets this + i. 0 = off.")
    ] = 0,
    until_drained: Annotated[
        bool,
        typer.Option("--until-drained", help="Stop once the --source files are ingested and every frame is stored."),
    ] = False,
    drain_timeout: Annotated[float, typer.Option(help="With --until-drained: fail after this many seconds.")] = 600.0,
    stop_timeout: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL when stopping.")] = 10.0,
    verbose: Verbose = False,
) -> None:
    """Run the whole topology as separate processes, restart crashed workers, stop all cleanly on Ctrl-C."""
    _setup_logging(verbose)
    from fervid.bus import EmbeddedRedis, redact_url
    from fervid.settings import load_settings
    from fervid.supervisor import ProcessSpec, Supervisor
    from fervid.worker import StopFlag

    settings = load_settings(data_dir=data_dir, redis_url=redis, db_url=db)
    data = settings.data_dir.resolve()
    if not source and not config:
        raise ConfigError("nothing to ingest: give --source FILE (repeatable) or --config cameras.yaml")
    if until_drained and config:
        raise ConfigError("--until-drained needs files (--source): live cameras never drain")
    if config and not _has_command("ingest"):
        raise ConfigError("--config needs `fervid ingest`, which this build does not have; use --source files")

    specs: list[ProcessSpec] = []
    if config:
        specs.append(ProcessSpec("ingest", ["ingest", "--config", str(config.resolve())]))
    if source:
        args = ["ingest-files", *source] + [a for c in camera or [] for a in ("--camera", c)]
        if fps:
            args += ["--fps", str(fps)]
        specs.append(ProcessSpec("ingest-files", args, oneshot=True))
    specs += [ProcessSpec(f"detector-{i + 1}", ["detect"]) for i in range(detectors)]
    specs += [ProcessSpec(f"classifier-{i + 1}", ["classify"]) for i in range(classifiers)]
    specs.append(ProcessSpec("storage", ["store"]))
    if verbose:  # workers log at INFO too
        for spec in specs:
            spec.args.append("--verbose")
    if metrics_port:
        for i, spec in enumerate(specs):
            spec.env["FERVID_METRICS_PORT"] = str(metrics_port + i)

    stop = StopFlag()
    stop.install_signal_handlers()
    embedded = None if settings.redis_url else EmbeddedRedis(data)
    redis_url = settings.redis_url or embedded.url  # type: ignore[union-attr]
    db_url = settings.db_url or f"sqlite:///{data / 'fervid.db'}"
    env = {"FERVID_REDIS_URL": redis_url, "FERVID_DB_URL": db_url, "FERVID_DATA_DIR": str(data)}
    console.print(
        f"[up] redis {redact_url(redis_url)}  db {redact_url(db_url)}  logs {data / 'logs'}",
        highlight=False,
        markup=False,
    )
    sup = Supervisor(
        specs, env=env, log_dir=data / "logs", stop_timeout=stop_timeout, status_file=data / "up.json",
        on_status=lambda line: console.print(line, highlight=False, markup=False),
    )  # fmt: skip
    error: FervidError | None = None
    try:
        if db_url.startswith("sqlite:"):  # create the schema once, before several processes race to
            from storage.db import create_schema, make_engine

            create_schema(make_engine(db_url))
        sup.start()
        until = None
        if until_drained:
            until = _drain_check(sup, redis_url, settings, time.monotonic() + drain_timeout)
        try:
            sup.run(stop.is_set, until)
        except FervidError as exc:
            error = exc
    finally:
        codes = sup.stop()
        if embedded:
            embedded.close()
    # -SIGTERM: stopped before it installed its handler (still importing), so nothing was in flight.
    bad = {name: rc for name, rc in codes.items() if rc not in (0, None, -signal.SIGTERM)}
    console.print(f"[up] stopped: {', '.join(f'{n}={rc}' for n, rc in codes.items())}", highlight=False, markup=False)
    if error:
        raise error
    if bad:
        raise FervidError(f"workers exited uncleanly: {bad}")


def _drain_check(sup: Any, redis_url: str, settings: Any, deadline: float) -> Any:
    from fervid.bus import Bus, connect
    from fervid.contracts import (
        CAMERAS_KEY,
        CLASSIFIER_GROUP,
        DETECTOR_GROUP,
        EVENTS_STREAM,
        FACES_STREAM,
        STORAGE_GROUP,
        frames_stream,
    )

    probe = Bus(connect(redis_url), "probe")
    calm_since: list[float] = []

    def drained() -> bool:
        if sup.failed():
            raise FervidError(f"{', '.join(c.spec.name for c in sup.failed())} failed; see {sup.log_dir}")
        if time.monotonic() > deadline:
            raise FervidError("the pipeline did not drain in time; see the worker logs")
        if not sup.oneshots_done():
            return False
        cameras = sorted(c.decode() for c in probe.redis.smembers(CAMERAS_KEY))
        streams = [(frames_stream(c), DETECTOR_GROUP) for c in cameras]
        streams += [(FACES_STREAM, CLASSIFIER_GROUP), (EVENTS_STREAM, STORAGE_GROUP)]
        if any(probe.backlog(s, g) for s, g in streams):
            calm_since.clear()
            return False
        calm_since.append(time.monotonic())
        return calm_since[-1] - calm_since[0] >= 0.5  # empty twice, half a second apart

    return drained
