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
from fervid.contracts import (
    CLASSIFIER_GROUP,
    DEAD_LETTER_STREAM,
    DETECTOR_GROUP,
    EMOTIONS,
    EVENTS_STREAM,
    FACES_STREAM,
    STORAGE_GROUP,
    frames_stream,
)
from fervid.errors import FervidError
from fervid.settings import Settings
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
    from classifier.serving import load_classifier
    from classifier.worker import ClassifierStage
    from detector.registry import create_configured
    from detector.worker import DetectorStage
    from ingest.runner import run_live, run_source
    from ingest.source import is_live, probe_file
    from storage.db import create_schema, make_engine
    from storage.worker import StorageStage

    stop = stop or StopFlag()
    client = connect(redis_url)
    engine = make_engine(settings.resolved_db_url)
    create_schema(engine)
    for spec in sources:
        if not is_live(spec.url):
            probe_file(spec.url)  # a missing or non-video file fails now, before models load
    detector = create_configured(
        settings.detector.backend, device=settings.detector.device, min_face=settings.detector.min_face
    )
    classifier = load_classifier(
        settings.classifier.model,
        settings.classifier.checkpoint,
        settings.classifier.device,
        compile=settings.classifier.compile,
        max_crops=settings.classifier.max_crops,
    )

    def bus(group: str) -> Bus:
        return Bus(client, group, claim_idle_ms=settings.bus.claim_idle_ms, max_deliveries=settings.bus.max_deliveries)

    dead_before = _dead_count(client)
    workers_stop = StopFlag()
    storage = StorageStage(engine, settings, workers_stop.is_set)
    stages = [
        DetectorStage(bus(DETECTOR_GROUP), detector, settings, workers_stop.is_set),
        ClassifierStage(bus(CLASSIFIER_GROUP), classifier, settings, workers_stop.is_set),
        storage,
    ]
    workers = [
        _Thread(
            f"{s.name}-worker",
            lambda s=s: run_stage(s, getattr(s, "bus", None) or bus(STORAGE_GROUP), stop=workers_stop, block_ms=100),
        )
        for s in stages
    ]
    counters: dict[str, Any] = {}
    ingests = [
        # Live sources reconnect (backoff, stall watchdog) until stopped; files are read once.
        _Thread(
            f"ingest-{spec.camera}",
            lambda spec=spec, run=run_live if is_live(spec.url) else run_source: counters.__setitem__(
                spec.camera, run(bus("ingest"), spec, settings, should_stop=stop.is_set)
            ),
        )
        for spec in sources
    ]
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
        streams = [(frames_stream(s.camera), DETECTOR_GROUP) for s in sources]
        streams += [(FACES_STREAM, CLASSIFIER_GROUP), (EVENTS_STREAM, STORAGE_GROUP)]
        probe = bus("probe")
        deadline = time.monotonic() + drain_timeout
        while not stop.is_set() and any(probe.backlog(s, g) for s, g in streams):
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
    summary = _summarise(engine, counters)
    summary.seconds = time.monotonic() - started
    summary.dead_letters = _dead_count(client) - dead_before
    return summary


def _raise_failed(threads: list[_Thread]) -> None:
    for t in threads:
        if t.error is not None:
            raise t.error


def _dead_count(client: Any) -> int:
    return sum(int(v) for v in client.hgetall(f"{DEAD_LETTER_STREAM}:counts").values())


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
