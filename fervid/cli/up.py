"""`fervid up`: the distributed topology (ingest, N detectors, N classifiers, storage) as supervised OS
processes against one Redis and one database: embedded ones by default, yours with --redis/--db."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fervid.cli import app, console, setup_logging
from fervid.cli.options import DataDir, DbUrl, Fps, LogLevelOption, RedisUrl, Verbose
from fervid.errors import ConfigError, FervidError

if TYPE_CHECKING:
    from fervid.settings import Settings
    from fervid.supervisor import ProcessSpec, Supervisor
    from fervid.worker import StopFlag


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
    fps: Fps = None,
    detectors: Annotated[int, typer.Option("--detectors", min=1, help="Detector replicas.")] = 1,
    classifiers: Annotated[int, typer.Option("--classifiers", min=1, help="Classifier replicas.")] = 1,
    one_process: Annotated[
        bool,
        typer.Option(
            "--one-process",
            help="Detector, classifier and storage as threads of one worker process sharing one torch pool "
            "(`fervid stages`): for machines with few cores. Not with replicas.",
        ),
    ] = False,
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
    log_level: LogLevelOption = None,
    verbose: Verbose = False,
) -> None:
    """Run the whole topology as separate processes, restart crashed workers, stop all cleanly on Ctrl-C."""
    setup_logging(log_level, verbose)
    from fervid.bus import redis_url_for
    from fervid.settings import load_settings
    from fervid.worker import StopFlag

    settings = load_settings(data_dir=data_dir, redis_url=redis, db_url=db)
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    if not source and not config:
        raise ConfigError("nothing to ingest: give --source FILE (repeatable) or --config cameras.yaml")
    if until_drained and config:
        raise ConfigError("--until-drained needs files (--source): live cameras never drain")
    if one_process and (detectors > 1 or classifiers > 1):
        raise ConfigError("--one-process runs one of each stage: leave --detectors and --classifiers at 1")

    specs = _worker_specs(
        source, camera, config, fps, replicas={"detector": detectors, "classifier": classifiers}, one=one_process
    )
    for i, spec in enumerate(specs):
        if log_level or verbose:  # the workers log at this level too (else at their default, info)
            spec.env["FERVID_LOG_LEVEL"] = log_level or "info"
        if metrics_port:
            spec.env["FERVID_METRICS_PORT"] = str(metrics_port + i)

    stop = StopFlag()
    stop.install_signal_handlers()
    with redis_url_for(settings) as redis_url:
        timeouts = {"drain_timeout": drain_timeout, "stop_timeout": stop_timeout}
        codes, error = _supervise(specs, settings, redis_url, stop, until_drained=until_drained, **timeouts)
    # -SIGTERM: the signal found no handler of the worker's own, so nothing was in flight: it was already exiting
    # (Python puts the default one back as it shuts down); one still starting exits 0 (fervid/signals.py).
    bad = {name: rc for name, rc in codes.items() if rc not in (0, None, -signal.SIGTERM)}
    console.print(f"[up] stopped: {', '.join(f'{n}={rc}' for n, rc in codes.items())}", highlight=False, markup=False)
    if error:
        raise error
    if bad:
        raise FervidError(f"workers exited uncleanly: {bad}")


def _worker_specs(
    source: list[str] | None,
    camera: list[str] | None,
    config: Path | None,
    fps: float | None,
    *,
    replicas: dict[str, int],
    one: bool,
) -> list[ProcessSpec]:
    """The processes `fervid up` supervises: ingest (cameras.yaml, files), then each stage (`replicas` of some),
    or all stages in one process."""
    from fervid.stages import STAGES
    from fervid.supervisor import ProcessSpec

    specs: list[ProcessSpec] = []
    if config:
        specs.append(ProcessSpec("ingest", ["ingest", "--config", str(config.resolve())]))
    if source:
        args = ["ingest-files", *source] + [a for c in camera or [] for a in ("--camera", c)]
        if fps:
            args += ["--fps", str(fps)]
        specs.append(ProcessSpec("ingest-files", args, oneshot=True))
    if one:
        specs.append(ProcessSpec("stages", ["stages", *(entry.name for entry in STAGES)]))
    for entry in STAGES if not one else ():
        n = replicas.get(entry.name, 1)
        names = [f"{entry.name}-{i + 1}" for i in range(n)] if entry.name in replicas else [entry.name]
        specs += [ProcessSpec(name, [entry.command]) for name in names]
    return specs


def _supervise(
    specs: list[ProcessSpec],
    settings: Settings,
    redis_url: str,
    stop: StopFlag,
    *,
    until_drained: bool,
    drain_timeout: float,
    stop_timeout: float,
) -> tuple[dict[str, int | None], FervidError | None]:
    """Start the workers and supervise them until a signal (or, with `until_drained`, until the pipeline has
    drained); then stop them. Returns their exit codes and what ended the run badly, if anything."""
    from fervid.bus import redact_url
    from fervid.supervisor import Supervisor

    data: Path = settings.data_dir
    db_url = settings.resolved_db_url
    env = {
        "FERVID_REDIS_URL": redis_url,
        "FERVID_DB_URL": db_url,
        "FERVID_DATA_DIR": str(data),
        "FERVID_NAMESPACE": settings.namespace,  # every worker reads and writes the same keys as this process
    }
    console.print(
        f"[up] redis {redact_url(redis_url)}  namespace {settings.namespace}  db {redact_url(db_url)}"
        f"  logs {data / 'logs'}",
        highlight=False,
        markup=False,
    )
    sup = Supervisor(
        specs,
        env=env,
        log_dir=data / "logs",
        stop_timeout=stop_timeout,
        status_file=data / "up.json",
        on_status=lambda line: console.print(line, highlight=False, markup=False),
    )
    error: FervidError | None = None
    try:
        if db_url.startswith("sqlite:"):  # create the schema once, before several processes race to
            from storage.db import create_schema, make_engine

            create_schema(make_engine(db_url))
        sup.start()
        until = _drain_check(sup, redis_url, settings, time.monotonic() + drain_timeout) if until_drained else None
        try:
            sup.run(stop.is_set, until)
        except FervidError as exc:
            error = exc
    finally:
        codes = sup.stop()
    return codes, error


def _drain_check(sup: Supervisor, redis_url: str, settings: Settings, deadline: float) -> Callable[[], bool]:
    """True once the one-shot workers (file ingest) are done and the pipeline has drained. Rides out Redis being
    away (however long: the workers wait for it too): the check just says "not yet" until it answers again."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from fervid.bus import Bus, redact_url

    # No retries inside a call: an outage answers "not yet" at once and the supervisor goes on watching its workers.
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30, retry=Retry(NoBackoff(), 0))
    probe = Bus.from_settings(client, "probe", settings)
    calm_since: list[float] = []
    away_since: list[float] = []

    def drained() -> bool:
        if sup.failed():
            raise FervidError(f"{', '.join(c.spec.name for c in sup.failed())} failed; see {sup.log_dir}")
        if time.monotonic() > deadline:
            raise FervidError("the pipeline did not drain in time; see the worker logs")
        if not sup.oneshots_done():
            return False
        try:
            backlog = probe.pipeline_backlog()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            calm_since.clear()
            if not away_since:
                away_since.append(time.monotonic())
                console.print(
                    f"[up] Redis at {redact_url(redis_url)} unreachable ({exc}); waiting for it to drain",
                    highlight=False,
                    markup=False,
                )
            return False
        if away_since:
            console.print(
                f"[up] Redis is back after {time.monotonic() - away_since.pop():.0f}s", highlight=False, markup=False
            )
        if backlog:
            calm_since.clear()
            return False
        calm_since.append(time.monotonic())
        return calm_since[-1] - calm_since[0] >= 0.5  # empty twice, half a second apart

    return drained
