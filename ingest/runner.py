"""Running one source end to end: open → decode → sample → publish, until the source ends or a stop."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from fervid.bus import Bus, StopRequested, redact_url
from fervid.settings import Settings
from ingest.publisher import CameraCounters, FramePublisher
from ingest.source import Sampler, decode, is_live, open_container

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    camera: str
    url: str
    fps: float | None = None  # analysis rate; None = every frame
    seconds: float | None = None  # stop after this much video


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
    with open_container(spec.url) as container:
        try:
            for frame in decode(container, spec.url):
                if should_stop():
                    break
                if spec.seconds is not None and frame.pts >= spec.seconds:
                    break
                publisher.counters.decoded += 1
                if not sampler.keep(frame.pts):
                    continue
                publisher.publish(frame.image, anchor + frame.pts, should_stop=should_stop)
        except StopRequested:
            pass
    return publisher.counters
