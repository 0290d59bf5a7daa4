"""Running one source end to end for `fervid demo`: a file once through (:func:`run_source`), a live source
with reconnects (:func:`run_live`), until the source ends, a time limit or a stop."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass

from fervid.bus import Bus, StopRequested, redact_url
from fervid.contracts import validate_camera_name
from fervid.errors import ConfigError, SourceError
from fervid.settings import Settings
from ingest.camera import CameraRunner
from ingest.cameras import CameraConfig
from ingest.publisher import CameraCounters, FramePublisher
from ingest.source import Sampler, decode, is_live, open_container, source_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    camera: str
    url: str
    fps: float | None = None  # analysis rate; None = every frame
    seconds: float | None = None  # stop after this much video


def source_specs(
    urls: Sequence[str], names: Sequence[str] | None = None, *, fps: float | None = None, seconds: float | None = None
) -> list[SourceSpec]:
    """One SourceSpec per URL, named by `names` (one per URL) or by default (a file's stem, else cameraN).
    Raises ConfigError for a bad or missing name, before anything connects."""
    names = list(names or [])
    if names and len(names) != len(urls):
        raise ConfigError(f"{len(names)} --camera names for {len(urls)} sources: give one per source or none")
    specs = []
    for i, url in enumerate(urls):
        name = names[i] if names else default_camera_name(url, i)
        try:
            validate_camera_name(name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        specs.append(SourceSpec(name, url, fps=fps, seconds=seconds))
    return specs


def default_camera_name(url: str, index: int) -> str:
    """A file's stem made a valid camera name; `cameraN` for anything else."""
    if source_kind(url) == "file":
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(url).stem).lstrip("._-")
        return stem[:64] or f"camera{index}"
    return f"camera{index}"


def run_source(
    bus: Bus,
    spec: SourceSpec,
    settings: Settings,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    start_ts: float | None = None,
) -> CameraCounters:
    """Publish `spec`'s frames once through (one connection). Raises SourceError when it cannot be read.

    Capture time: for files, `start_ts` (default: now) + PTS, so a file replays as if recorded from now;
    for live sources, the wall clock at connect + PTS since connect.
    """
    live = is_live(spec.url)
    publisher = FramePublisher(bus, spec.camera, settings, live=live)
    sampler = Sampler(spec.fps)
    anchor = time.time() if start_ts is None else start_ts
    log.info("%s: reading %s", spec.camera, redact_url(spec.url))
    try:
        with open_container(spec.url) as container:
            for frame in decode(container, spec.url):
                if should_stop():
                    break
                if spec.seconds is not None and frame.pts >= spec.seconds:
                    break
                publisher.counters.decoded += 1
                if not sampler.keep(frame.pts):
                    continue
                publisher.publish(frame.raw, anchor + frame.pts, should_stop=should_stop)
        publisher.flush()
    except StopRequested:
        pass
    finally:
        publisher.close()
    return publisher.counters


def run_live(
    bus: Bus,
    spec: SourceSpec,
    settings: Settings,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    poll_s: float = 0.05,
) -> CameraCounters:
    """Publish a live source (RTSP, webcam) through a reconnecting :class:`CameraRunner` (backoff, stall
    watchdog) until `should_stop`, or until `spec.seconds` after it first went live.

    A permanent error (wrong path, wrong credentials) before the camera was ever live raises SourceError, as
    :func:`run_source` does: a typo should end a demo, not retry it every minute. Once live, every loss is
    retried.
    """
    runner = CameraRunner(CameraConfig(name=spec.camera, url=spec.url, fps=spec.fps), bus.redis, settings)
    log.info("%s: reading %s (live: reconnects until stopped)", spec.camera, redact_url(spec.url))
    runner.start()
    live_since: float | None = None
    try:
        while runner.is_alive() and not should_stop():
            s = runner.snapshot()
            if live_since is None and s.state == "live":
                live_since = time.monotonic()
            if live_since is None and s.state == "failed":
                raise SourceError(s.last_error)
            if live_since is not None and spec.seconds is not None and time.monotonic() - live_since >= spec.seconds:
                break
            time.sleep(poll_s)
    finally:
        runner.stop()
        runner.join(10)
    counters = runner.counters()
    log.info(
        "%s: %d frames published, %d dropped, %d reconnects",
        spec.camera,
        counters.published,
        counters.dropped,
        runner.snapshot().reconnects,
    )
    return counters
