"""Wiring the stages together in one process (threads), for `fervid demo` and the end-to-end tests.

Each stage runs its real worker loop against the real bus; only the process boundary differs from the
services that `docker compose` or `fervid up` run. Stage packages are imported lazily, inside functions.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    from ingest.source import is_live, probe_file

    client = connect(redis_url)
    for spec in sources:
        if not is_live(spec.url):
            probe_file(spec.url)  # a missing or non-video file fails now, before models load
    run = _Run(sources, settings, client, stop or StopFlag(), on_progress)
    try:
        run.start()
        run.wait_for_ingest()
        run.drain(drain_timeout)
    finally:
        run.close()
    return run.summary()


class _Run:
    """One `run_pipeline`: the ingest threads, the stages and their worker threads, and the analysis windows of
    the live cameras."""

    def __init__(
        self,
        sources: list[Any],
        settings: Settings,
        client: Any,
        stop: StopFlag,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        from ingest.source import is_live

        self.sources, self.settings, self.client, self.stop = sources, settings, client, stop
        self.on_progress = on_progress
        self.dead_before = _dead_count(client, settings)
        self.workers_stop = StopFlag()
        self.buses = {e.name: Bus.from_settings(client, e.group, settings) for e in STAGES}
        self.counters: dict[str, Any] = {}
        self.live = [spec for spec in sources if is_live(spec.url)]
        self.published_before = {spec.camera: _published(client, settings, spec.camera) for spec in self.live}
        self.windows: dict[str, float] = {}  # live camera -> when its analysis began: stages ready and it was live
        self.ingests = [_Thread(f"ingest-{spec.camera}", functools.partial(self.ingest, spec)) for spec in sources]
        self.workers: list[_Thread] = []
        self.stages: dict[str, Any] = {}
        self.progress = Progress(expected=None)
        self.discarded = 0
        self.started = 0.0

    def ingest(self, spec: Any) -> None:
        from ingest.runner import run_source
        from ingest.source import is_live

        bus = Bus.from_settings(self.client, "ingest", self.settings)
        if not is_live(spec.url):  # files are read once
            self.counters[spec.camera] = run_source(bus, spec, self.settings, should_stop=self.stop.is_set)
            return

        # Live sources reconnect (backoff, stall watchdog) until stopped. A camera connects while the models load;
        # its `seconds` count from its analysis window's start, not from its connection.
        def done() -> bool:
            began = self.windows.get(spec.camera)
            over = spec.seconds is not None and began is not None and time.monotonic() - began >= spec.seconds
            return self.stop.is_set() or over

        self.counters[spec.camera] = run_source(bus, replace(spec, seconds=None), self.settings, should_stop=done)

    def open_windows(self) -> None:
        """Start the analysis window of every live camera that has sent a frame since this run began."""
        for spec in self.live:
            sent = _published(self.client, self.settings, spec.camera) > self.published_before[spec.camera]
            if spec.camera not in self.windows and sent:
                self.windows[spec.camera] = time.monotonic()

    def start(self) -> None:
        """Build the stages, downstream first, so an unreachable database fails before any source is opened or
        model loads; sources start while the models load: a file's first frames are waiting when the detector is
        ready, and a camera is connected by then (what it sends meanwhile ages out, bus.frame_max_age_ms)."""
        first, *rest = reversed(STAGES)
        self.stages[first.name] = first.build(self.settings, self.buses[first.name], self.workers_stop.is_set)
        for t in self.ingests:
            t.start()
        for entry in rest:
            _raise_failed(self.ingests)
            self.stages[entry.name] = entry.build(self.settings, self.buses[entry.name], self.workers_stop.is_set)
        # What the cameras sent while the models loaded is stale: dropped (and counted), never analysed.
        self.discarded = sum(_discard_waiting(self.client, self.settings, spec.camera) for spec in self.live)
        self.open_windows()
        self.workers = [
            _Thread(f"{name}-worker", functools.partial(self._work, stage, self.buses[name]))
            for name, stage in self.stages.items()
        ]
        self.started = time.monotonic()
        for t in self.workers:
            t.start()

    def _work(self, stage: Any, bus: Bus) -> None:
        run_stage(stage, bus, stop=self.workers_stop, block_ms=100)

    @property
    def storage(self) -> Any:
        return self.stages["storage"]

    def report(self) -> None:
        self.progress.stored = self.storage.frames_written
        if self.on_progress:
            self.on_progress(self.progress)

    def wait_for_ingest(self) -> None:
        while any(t.is_alive() for t in self.ingests):
            _raise_failed(self.workers + self.ingests)
            self.open_windows()
            self.report()
            time.sleep(0.2)
        _raise_failed(self.ingests)

    def drain(self, timeout: float) -> None:
        """Wait until every frame of the sources is stored or dead-lettered (or the run is stopped)."""
        probe = Bus.from_settings(self.client, "probe", self.settings)
        cameras = [s.camera for s in self.sources]
        deadline = time.monotonic() + timeout
        while not self.stop.is_set() and probe.pipeline_backlog(cameras):
            _raise_failed(self.workers)
            if time.monotonic() > deadline:
                raise FervidError(f"pipeline did not drain within {timeout:.0f}s (a stage is stuck; see the log)")
            self.report()
            time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()
        self.workers_stop.set()
        for t in self.workers + self.ingests:
            if t.ident is not None:  # started
                t.join(timeout=10)

    def summary(self) -> RunSummary:
        self.report()
        _raise_failed(self.workers)
        summary = _summarise(self.storage.engine, self.counters)
        summary.dropped += self.discarded
        summary.seconds = time.monotonic() - self.started
        summary.dead_letters = _dead_count(self.client, self.settings) - self.dead_before
        return summary


def _raise_failed(threads: list[_Thread]) -> None:
    for t in threads:
        if t.error is not None:
            raise t.error


def _published(client: Any, settings: Settings, camera: str) -> int:
    return int(client.hget(settings.keys.camera(camera, "stats"), "published") or 0)


def _discard_waiting(client: Any, settings: Settings, camera: str) -> int:
    """Drop the frames of `camera` that no detector has read yet, counting them as dropped (the stats hash, as the
    publisher counts its drops). Returns how many."""
    from fervid.contracts import DETECTOR_GROUP

    stream = settings.keys.frames(camera)
    last = "0-0"
    for group in client.xinfo_groups(stream) if client.exists(stream) else []:
        if group["name"] in (DETECTOR_GROUP, DETECTOR_GROUP.encode()):
            last = group["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
    ids = [entry_id for entry_id, _ in client.xrange(stream, f"({last}", "+")]
    dropped = int(client.xdel(stream, *ids)) if ids else 0  # the publisher may have aged some out meanwhile
    if dropped:
        client.hincrby(settings.keys.camera(camera, "stats"), "dropped", dropped)
        log.info("%s: %d frames sent while the models loaded were dropped", camera, dropped)
    return dropped


def _dead_count(client: Any, settings: Settings) -> int:
    return sum(int(v) for v in client.hgetall(settings.keys.dead_counts).values())


def _summarise(engine: Any, counters: dict[str, Any]) -> RunSummary:
    from sqlalchemy import func, select

    from storage.db import FrameRow, events_table

    events = events_table.c

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
            ev = (events.camera == camera) & events.frame_seq.between(c.first_seq, c.last_seq)
            for label, n in conn.execute(select(events.label, func.count()).where(ev).group_by(events.label)):
                summary.labels[label] += n
                summary.faces += n
    for e in EMOTIONS:
        summary.labels.setdefault(e, 0)
    return summary
