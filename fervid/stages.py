"""The table of consuming stages, and serving one of them (or several in one process) as a service.

:data:`STAGES` is the one place that says which package builds which stage: `fervid demo` (threads, see
fervid/pipeline.py), `fervid up` (one process per stage) and each `fervid <command>` service are all built from
it. A stage class offers ``from_settings(settings, bus, should_stop)``, which loads what it needs (its model, its
database); adding a stage is one row here. Stage packages are imported lazily, when a stage is built, so the
spine imports no stage.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fervid.contracts import CLASSIFIER_GROUP, DETECTOR_GROUP, STORAGE_GROUP
from fervid.errors import ConfigError
from fervid.logs import format_config
from fervid.settings import Settings
from fervid.signals import exit_now_on_signal
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
    """Run one stage as a service: connect (waiting for Redis however long it is away), serve health and metrics,
    build the stage (loads its model), run the worker loop until SIGTERM (or the bounded mode's limits).
    ``/health`` answers while the model loads, ``/ready`` once it is loaded."""
    (stats,), (stage,) = serve_stages([entry], settings, max_messages=max_messages, idle_timeout=idle_timeout)
    return stats, stage


def serve_stages(
    entries: Sequence[StageEntry],
    settings: Settings,
    *,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
) -> tuple[list[LoopStats], list[Stage[Any]]]:
    """`serve` for one stage or several in one process (`fervid stages`, `fervid up --one-process`): each runs its
    worker loop on a thread of its own, the models share the process's one torch pool (fervid/threads.py), and one
    health server answers for all (``/ready`` once every stage is built). On a machine with few cores that is the
    in-process pipeline's efficiency, with the services' supervision. A stage that fails stops the others."""
    from fervid.bus import Bus, connect_waiting
    from fervid.metrics import serve_health
    from fervid.worker import run_stage

    name = "+".join(e.name for e in entries)
    if not settings.redis_url:
        raise ConfigError(f"{name} needs a shared Redis: set FERVID_REDIS_URL or pass --redis")
    for entry in entries:
        config = startup_config(entry, settings)
        log.info("%s: starting with %s", entry.name, format_config(config), extra={"config": config})
    exit_now_on_signal()  # nothing is in flight until the models are loaded: SIGTERM/Ctrl-C exits at once
    stop = StopFlag()
    client = connect_waiting(settings.redis_url, name)
    built: list[Stage[Any]] = []
    health = serve_health(
        name,
        settings.metrics_port,
        client,
        settings.keys,
        {"model": lambda: None if built else "loading"},
        bus_metrics=any(e.exports_bus for e in entries),
    )
    try:
        buses = [Bus.from_settings(client, e.group, settings) for e in entries]
        stages = [e.build(settings, bus, stop.is_set) for e, bus in zip(entries, buses, strict=True)]
        built.extend(stages)
        stop.install_signal_handlers()  # from the first read on: finish the batch in hand, then stop
        log.info("%s: ready", name)

        loops = [
            functools.partial(
                run_stage,
                stage,
                bus,
                stop=stop,
                block_ms=settings.bus.block_ms,
                max_messages=max_messages,
                idle_timeout=idle_timeout,
            )
            for stage, bus in zip(stages, buses, strict=True)
        ]
        return _run_together(loops, [e.name for e in entries], stop), stages
    finally:
        health.close()


def _run_together(loops: Sequence[Callable[[], LoopStats]], names: Sequence[str], stop: StopFlag) -> list[LoopStats]:
    """Run the stages' worker loops, each on a thread of its own (one runs on this thread). One loop ending
    (stopped, bounded, failed) ends the others; the first failure is raised once all have stopped."""
    if len(loops) == 1:
        return [loops[0]()]
    results: dict[int, LoopStats] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = loops[i]()
        except BaseException as exc:
            errors.append(exc)
            log.error("%s: failed: %s", names[i], exc)
        finally:
            stop.set()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"{name}-worker", daemon=True)  # a second signal exits now
        for i, name in enumerate(names)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.5)  # wakes up for signals, which the main thread handles
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(loops))]


def startup_config(entry: StageEntry, settings: Settings) -> dict[str, Any]:
    """What a stage service runs with: its settings section (with the device `auto` resolved to), Redis, and
    the database for storage; credentials redacted."""
    config = settings.describe(entry.name, db=entry.name == "storage")
    section = config[entry.name]
    if section.get("device") == "auto":
        from fervid.device import resolve_device

        section["device"] = f"{resolve_device('auto')} (auto)"
    return config
