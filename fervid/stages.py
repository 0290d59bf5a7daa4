"""The table of consuming stages, and serving one of them as a service.

:data:`STAGES` is the one place that says which package builds which stage: `fervid demo` (threads, see
fervid/pipeline.py), `fervid up` (one process per stage) and each `fervid <command>` service are all built from
it. A stage class offers ``from_settings(settings, bus, should_stop)``, which loads what it needs (its model, its
database); adding a stage is one row here. Stage packages are imported lazily, when a stage is built, so the
spine imports no stage.
"""

from __future__ import annotations

import importlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fervid.contracts import CLASSIFIER_GROUP, DETECTOR_GROUP, STORAGE_GROUP
from fervid.errors import ConfigError
from fervid.logs import format_config
from fervid.settings import Settings
from fervid.worker import LoopStats, Stage, StopFlag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageEntry:
    name: str  # stage and service name, as in logs, metrics and `fervid up`'s process names
    command: str  # the fervid command that serves this stage alone
    group: str  # its consumer group
    factory: str  # "module:Class"; the class has from_settings(settings, bus, should_stop)
    # Its service also exports the bus's series (stream lag, dead letters, frames dropped): exactly one stage does,
    # so that a sum() over them counts each stream once (fervid/metrics.py).
    exports_bus: bool = False

    def build(self, settings: Settings, bus: Any, should_stop: Callable[[], bool]) -> Stage[Any]:
        module, _, cls = self.factory.partition(":")
        stage: Stage[Any] = getattr(importlib.import_module(module), cls).from_settings(settings, bus, should_stop)
        return stage


STAGES: tuple[StageEntry, ...] = (
    StageEntry("detector", "detect", DETECTOR_GROUP, "detector.worker:DetectorStage"),
    StageEntry("classifier", "classify", CLASSIFIER_GROUP, "classifier.worker:ClassifierStage"),
    StageEntry("storage", "store", STORAGE_GROUP, "storage.worker:StorageStage", exports_bus=True),
)


def stage_entry(name: str) -> StageEntry:
    for entry in STAGES:
        if entry.name == name:
            return entry
    raise ConfigError(f"unknown stage {name!r}: use one of {', '.join(e.name for e in STAGES)}")


def serve(
    entry: StageEntry,
    settings: Settings,
    *,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
) -> tuple[LoopStats, Stage[Any]]:
    """Run one stage as a service: connect, serve health and metrics, build the stage (loads its model), run the
    worker loop until SIGTERM (or the bounded mode's limits). ``/health`` answers while the model loads, ``/ready``
    once it is loaded."""
    from fervid.bus import Bus, connect
    from fervid.metrics import serve_health
    from fervid.worker import run_stage

    if not settings.redis_url:
        raise ConfigError(f"{entry.name} needs a shared Redis: set FERVID_REDIS_URL or pass --redis")
    config = startup_config(entry, settings)
    log.info("%s: starting with %s", entry.name, format_config(config), extra={"config": config})
    exit_now_on_signal()  # nothing is in flight until the model is loaded: SIGTERM/Ctrl-C exits at once
    stop = StopFlag()
    client = connect(settings.redis_url)
    built: list[Stage[Any]] = []
    health = serve_health(
        entry.name,
        settings.metrics_port,
        client,
        settings.keys,
        {"model": lambda: None if built else "loading"},
        bus_metrics=entry.exports_bus,
    )
    try:
        bus = Bus.from_settings(client, entry.group, settings)
        built.append(entry.build(settings, bus, stop.is_set))
        stop.install_signal_handlers()  # from the first read on: finish the batch in hand, then stop
        log.info("%s: ready", entry.name)
        stats = run_stage(
            built[0],
            bus,
            stop=stop,
            block_ms=settings.bus.block_ms,
            max_messages=max_messages,
            idle_timeout=idle_timeout,
        )
        return stats, built[0]
    finally:
        health.close()


def startup_config(entry: StageEntry, settings: Settings) -> dict[str, Any]:
    """What a stage service runs with: its settings section (with the device `auto` resolved to), Redis, and
    the database for storage; credentials redacted."""
    config = settings.describe(entry.name, db=entry.name == "storage")
    section = config[entry.name]
    if section.get("device") == "auto":
        from fervid.device import resolve_device

        section["device"] = f"{resolve_device('auto')} (auto)"
    return config


def exit_now_on_signal() -> None:
    """Until work is in flight, SIGTERM/SIGINT end the process at once with status 0 (a slow model load is
    not waited for)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d while starting: exiting", signum)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
