"""Wiring the stages together in one process (threads), for `fervid demo` and the end-to-end tests.

Each stage runs its real worker loop against the real bus; only the process boundary differs from the
services that `docker compose` or `fervid up` run. Stage packages are imported lazily, inside functions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fervid.bus import Bus, connect
from fervid.contracts import EMOTIONS
from fervid.errors import FervidError
from fervid.settings import Settings
from fervid.stages import STAGES
from fervid.worker import StopFlag, run_stage

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    cameras: list[str]
    frames_published: int = 0
    frames_stored: int = 0
    faces: int = 0
    dropped: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    labels: Counter[str] = field(default_factory=Counter)
    first_seq: dict[str, int] = field(default_factory=dict)  # per camera: this run's first frame (seq)

    @property
    def fps(self) -> float:
        return self.frames_stored / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Progress:
    """Live counters for a progress display."""

    published: int = 0
    stored: int = 0
    expected: int | None = None


class _Thread(threading.Thread):
    """A thread that keeps its exception, so the pipeline can fail loudly instead of hanging."""

    def __init__(self, name: str, target: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:
            self.error = exc
            log.error("%s failed: %s", self.name, exc, exc_info=not isinstance(exc, FervidError))


def run_pipeline(
    sources: list[Any],
    settings: Settings,
    redis_url: str,
    *,
    stop: StopFlag | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    drain_timeout: float = 120.0,
) -> RunSummary:
    """Run ingest for `sources` (ingest.runner.SourceSpec) and all downstream stages until every published
    frame is stored (or dead-lettered), or until `stop` is set (live sources run until then)."""
    from ingest.runner import run_source
    from ingest.source import is_live, probe_file

    stop = stop or StopFlag()
    client = connect(redis_url)
    for spec in sources:
        if not is_live(spec.url):
            probe_file(spec.url)  # a missing or non-video file fails now, before models load
    dead_before = _dead_count(client, settings)
    workers_stop = StopFlag()
    buses = {e.name: Bus.from_settings(client, e.group, settings) for e in STAGES}
    # Downstream first: an unreachable database fails before any model loads.
    stages = {e.name: e.build(settings, buses[e.name], workers_stop.is_set) for e in reversed(STAGES)}
    storage: Any = stages["storage"]
    workers = [
        _Thread(f"{name}-worker", lambda s=stage, b=buses[name]: run_stage(s, b, stop=workers_stop, block_ms=100))
        for name, stage in stages.items()
    ]
    counters: dict[str, Any] = {}

    def ingest(spec: Any) -> None:
        # Live sources reconnect (backoff, stall watchdog) until stopped; files are read once.
        counters[spec.camera] = run_source(
            Bus.from_settings(client, "ingest", settings), spec, settings, should_stop=stop.is_set
        )

    ingests = [_Thread(f"ingest-{spec.camera}", lambda spec=spec: ingest(spec)) for spec in sources]
    progress = Progress(expected=None)
    started = time.monotonic()
    for t in workers + ingests:
        t.start()
    try:
        while any(t.is_alive() for t in ingests):
            _raise_failed(workers + ingests)
            progress.stored = storage.frames_written
            if on_progress:
                on_progress(progress)
            time.sleep(0.2)
        _raise_failed(ingests)
        probe = Bus.from_settings(client, "probe", settings)
        cameras = [s.camera for s in sources]
        deadline = time.monotonic() + drain_timeout
        while not stop.is_set() and probe.pipeline_backlog(cameras):
            _raise_failed(workers)
            if time.monotonic() > deadline:
                raise FervidError(f"pipeline did not drain within {drain_timeout:.0f}s (a stage is stuck; see the log)")
            progress.stored = storage.frames_written
            if on_progress:
                on_progress(progress)
            time.sleep(0.1)
    finally:
        stop.set()
        workers_stop.set()
        for t in workers + ingests:
            t.join(timeout=10)
    progress.stored = storage.frames_written
    if on_progress:
        on_progress(progress)
    _raise_failed(workers)
    summary = _summarise(storage.engine, counters)
    summary.seconds = time.monotonic() - started
    summary.dead_letters = _dead_count(client, settings) - dead_before
    return summary


def _raise_failed(threads: list[_Thread]) -> None:
    for t in threads:
        if t.error is not None:
            raise t.error


def _dead_count(client: Any, settings: Settings) -> int:
    return sum(int(v) for v in client.hgetall(settings.keys.dead_counts).values())


def _summarise(engine: Any, counters: dict[str, Any]) -> RunSummary:
    from sqlalchemy import func, select

    from storage.db import EventRow, FrameRow

    summary = RunSummary(cameras=sorted(counters))
    with engine.connect() as conn:
        for camera, c in counters.items():
            summary.frames_published += c.published
            summary.dropped += c.dropped
            if c.first_seq is None:
                continue
            summary.first_seq[camera] = c.first_seq
            in_run = (FrameRow.camera == camera) & FrameRow.seq.between(c.first_seq, c.last_seq)
            summary.frames_stored += conn.execute(select(func.count()).where(in_run)).scalar_one()
            ev = (EventRow.camera == camera) & EventRow.frame_seq.between(c.first_seq, c.last_seq)
            for label, n in conn.execute(select(EventRow.label, func.count()).where(ev).group_by(EventRow.label)):
                summary.labels[label] += n
                summary.faces += n
    for e in EMOTIONS:
        summary.labels.setdefault(e, 0)
    return summary
