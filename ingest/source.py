"""Opening and decoding one video source with PyAV: files, RTSP cameras and V4L2 webcams."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import av.error
import numpy as np

from fervid.bus import redact_url
from fervid.errors import SourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedFrame:
    image: np.ndarray  # BGR uint8 (H, W, 3)
    pts: float  # seconds since the start of the stream (or since connect, for live sources)


def source_kind(url: str) -> str:
    """'rtsp', 'v4l2' or 'file'."""
    if url.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if url.isdigit() or url.startswith("/dev/video"):
        return "v4l2"
    return "file"


def is_live(url: str) -> bool:
    return source_kind(url) != "file"


def open_container(url: str, *, timeout_s: float = 10.0, transport: str = "tcp") -> av.container.InputContainer:
    """Open `url` or raise :class:`SourceError` with a one-line reason (credentials redacted)."""
    kind = source_kind(url)
    options: dict[str, str] = {}
    fmt: str | None = None
    target = url
    if kind == "rtsp":
        # Low-latency probing: the defaults spend ~1 s analysing a stream we already know is video.
        options = {
            "rtsp_transport": transport,
            "timeout": str(int(timeout_s * 1e6)),  # microseconds, for socket I/O
            "analyzeduration": "500000",
            "probesize": "500000",
            "fflags": "nobuffer",
        }
    elif kind == "v4l2":
        target = f"/dev/video{url}" if url.isdigit() else url
        fmt = "v4l2"
        if not Path(target).exists():
            raise SourceError(f"webcam {target} does not exist (is the camera plugged in, and the device passed to the container?)")
    else:
        path = Path(url)
        if not path.exists():
            raise SourceError(f"video file {url} does not exist")
        if path.is_dir():
            raise SourceError(f"{url} is a directory, not a video file")
    try:
        container = av.open(target, format=fmt, options=options, timeout=timeout_s)
    except av.error.HTTPUnauthorizedError as exc:
        raise SourceError(f"{redact_url(url)}: the camera rejected the credentials (401)") from exc
    except av.error.HTTPNotFoundError as exc:
        raise SourceError(f"{redact_url(url)}: no such stream path on the camera (404)") from exc
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot open {redact_url(url)}: {_reason(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise SourceError(f"{redact_url(url)} has no video stream")
    return container


def decode(container: av.container.InputContainer, url: str = "") -> Iterator[DecodedFrame]:
    """Decode the first video stream to BGR frames. Corrupt packets are skipped; a broken source raises SourceError."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: decoding is otherwise single-core
    time_base = float(stream.time_base) if stream.time_base else 1 / 30
    start = stream.start_time or 0
    fallback_pts = 0.0
    rate = float(stream.average_rate or 30)
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                log.warning("%s: skipping a corrupt packet: %s", redact_url(url), _reason(exc))
                continue
            for frame in frames:
                if frame.pts is not None:
                    pts = (frame.pts - start) * time_base
                else:
                    pts = fallback_pts
                fallback_pts = pts + 1 / rate
                yield DecodedFrame(frame.to_ndarray(format="bgr24"), pts)
    except av.error.FFmpegError as exc:
        raise SourceError(f"{redact_url(url)}: read failed: {_reason(exc)}") from exc


def probe_file(url: str) -> float:
    """Fail fast on a file that is not a readable video; returns its duration in seconds (0 if unknown)."""
    with open_container(url) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration or 0) / 1e6


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return redact_url(str(text))


class Sampler:
    """Keeps frames at `fps` by timestamp, not by count, so a variable-rate source is sampled evenly."""

    def __init__(self, fps: float | None) -> None:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.period = 1 / fps if fps else 0.0
        self._next: float | None = None

    def keep(self, pts: float) -> bool:
        if not self.period:
            return True
        if self._next is None or pts >= self._next - 1e-6:
            # Schedule from the ideal grid, but never fall more than one period behind a jump in time.
            base = pts if self._next is None or pts - self._next > self.period else self._next
            self._next = base + self.period
            return True
        return False


def wall_clock_anchor() -> float:
    return time.time()
