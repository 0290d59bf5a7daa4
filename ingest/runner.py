"""Running one source end to end for `fervid demo` and `fervid ingest-files` (:func:`run_source`): a file once
through, or a live source with reconnects, until the source ends, a time limit or a stop. The source runs in a
:class:`~ingest.camera.CameraRunner`, as every camera of `fervid ingest` does."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fervid.bus import Bus, redact_url
from fervid.contracts import validate_camera_name
from fervid.errors import ConfigError, cut
from fervid.settings import Settings
from ingest.camera import HEARTBEAT_S, CameraRunner
from ingest.cameras import CameraConfig, camera_config
from ingest.publisher import CameraCounters
from ingest.source import checked_source, is_live, open_container, probe_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    camera: str
    url: str
    fps: float | None = None  # analysis rate; None = every frame
    seconds: float | None = None  # stop after this much video
    # Files: when the recording started (ISO 8601 or a datetime; no zone: UTC), overriding the file's
    # creation_time tag. Capture time = recording start + PTS.
    start_time: datetime | str | None = None

    def config(self) -> CameraConfig:
        """The camera this source runs as; ConfigError for a value it cannot take."""
        return camera_config(name=self.camera, url=self.url, fps=self.fps, start_time=self.start_time)


def source_specs(
    urls: Sequence[str],
    names: Sequence[str] | None = None,
    *,
    fps: float | None = None,
    seconds: float | None = None,
    start_time: datetime | str | None = None,
) -> list[SourceSpec]:
    """One SourceSpec per URL, named by `names` (one per URL) or by default (a file's stem, else cameraN).
    Raises ConfigError for a bad or missing name, a hopeless URL or a bad value, before anything connects."""
    names = list(names or [])
    if names and len(names) != len(urls):
        raise ConfigError(f"{len(names)} --camera names for {len(urls)} sources: give one per source or none")
    specs = []
    for i, url in enumerate(urls):
        checked_source(url)
        name = names[i] if names else default_camera_name(url, i)
        try:
            validate_camera_name(name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if start_time is not None and is_live(url):
            raise ConfigError(f"--start-time applies to video files, not to {cut(redact_url(url))}")
        spec = SourceSpec(name, url, fps=fps, seconds=seconds, start_time=start_time)
        spec.config()
        specs.append(spec)
    return specs


def default_camera_name(url: str, index: int) -> str:
    """A recording's file stem made a valid camera name; `cameraN` for a camera."""
    if not is_live(url):
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(url).stem).lstrip("._-")
        return stem[:64] or f"camera{index}"
    return f"camera{index}"


def expected_frames(specs: Sequence[SourceSpec]) -> int | None:
    """Frames the files will give at their analysis rates (for a progress bar's total), None when a source is
    live or a file does not say how long it is. Opening each file also fails early on a missing or bad one."""
    total: int | None = 0
    for spec in specs:
        if is_live(spec.url):
            total = None
            continue
        duration = probe_file(spec.url)
        with open_container(spec.url) as container:
            rate = float(container.streams.video[0].average_rate or 0)
        if spec.seconds is not None:
            duration = min(duration, spec.seconds) if duration else spec.seconds
        rate = min(rate, spec.fps) if spec.fps and rate else (spec.fps or rate)
        if total is not None and duration > 0 and rate > 0:
            total += math.ceil(duration * rate)
        else:
            total = None
    return total or None


def run_source(
    bus: Bus,
    spec: SourceSpec,
    settings: Settings,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    poll_s: float = 0.05,
) -> CameraCounters:
    """Publish `spec`'s frames: a file once through (or its first `spec.seconds`); a live source (RTSP, webcam),
    reconnecting with backoff, until `should_stop`, or for `spec.seconds` after it first went live. The
    camera's state is kept in Redis meanwhile, as `fervid ingest` keeps it.

    Raises SourceError for a file that cannot be read, and for a live source's permanent error (wrong path,
    wrong credentials) before it was ever live: a typo should end a demo, not retry it every minute. Once live,
    every loss is retried. A Redis outage is ridden out: a file waits for Redis and goes on where it was; a live
    source drops (and counts) its frames meanwhile.
    """
    live = is_live(spec.url)
    runner = CameraRunner(spec.config(), bus.redis, settings, fail_fast=True, seconds=None if live else spec.seconds)
    log.info("%s: reading %s%s", spec.camera, redact_url(spec.url), " (live: reconnects until stopped)" if live else "")
    runner.start()
    live_since: float | None = None
    beat = time.monotonic()
    try:
        while runner.is_alive() and not should_stop():
            now = time.monotonic()
            if now - beat >= HEARTBEAT_S:
                runner.publish_state()
                beat = now
            if live and spec.seconds is not None:
                if live_since is None and runner.snapshot().state == "live":
                    live_since = now
                if live_since is not None and now - live_since >= spec.seconds:
                    break
            runner.join(poll_s)
    finally:
        runner.stop()
        runner.join(10)
    if runner.error is not None:
        raise runner.error
    counters = runner.counters()
    log.info(
        "%s: %d frames published, %d dropped, %d dropped while Redis was unreachable, %d reconnects",
        spec.camera,
        counters.published,
        counters.dropped,
        counters.offline_drops,
        runner.snapshot().reconnects,
    )
    return counters
