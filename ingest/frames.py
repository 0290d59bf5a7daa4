"""The one decode → sample loop, and the capture time of the frames it keeps.

:func:`sampled` is what every reader of video runs: the camera runner (live cameras and files, for
`fervid ingest`, `fervid demo` and `fervid ingest-files`) and the annotator of `fervid demo --annotate`, which
must meet exactly the frames ingest kept: the k-th frame it keeps is sequence number ``first_seq + k``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import av

from fervid.contracts import parse_utc
from ingest.source import DecodedFrame, decode

# A creation_time before this is a camera's unset clock (1970, 1904), not when the video was recorded.
_EARLIEST_RECORDING = datetime(2000, 1, 1, tzinfo=UTC).timestamp()


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


@dataclass
class Reading:
    """How far one pass of :func:`sampled` has read (updated as it runs)."""

    decoded: int = 0
    last_pts: float | None = None  # of the last decoded frame


def sampled(
    container: av.container.InputContainer,
    url: str,
    *,
    fps: float | None,
    seconds: float | None = None,
    stall_s: float | None = None,
    reading: Reading | None = None,
) -> Iterator[DecodedFrame]:
    """The frames of `container` kept at `fps` (None: every frame), until `seconds` of video (None: the end).

    `stall_s` is :func:`ingest.source.decode`'s stall watchdog; `reading` counts what was decoded.
    """
    sampler = Sampler(fps)
    reading = reading if reading is not None else Reading()
    for frame in decode(container, url, stall_s=stall_s):
        if seconds is not None and frame.pts >= seconds:
            return
        reading.decoded += 1
        reading.last_pts = frame.pts
        if sampler.keep(frame.pts):
            yield frame


class CaptureClock:
    """Capture time (unix seconds) of each kept frame: an anchor + the frame's PTS.

    Live sources: the anchor is the wall clock at a connection's first frame less its PTS, and time never goes
    back across reconnects. Recordings: the anchor is :attr:`start`, the recording's start (see
    :func:`recording_start`), plus the video already played by earlier passes of a looping file.
    """

    def __init__(self, live: bool, start: float | None = None) -> None:
        self.live = live
        self.start = start
        self._played = 0.0
        self._anchor: float | None = None
        self._last = 0.0

    def stamp(self, pts: float) -> float:
        if self._anchor is None:
            if self.live:
                self._anchor = time.time() - pts
            else:
                if self.start is None:
                    self.start = time.time()
                self._anchor = self.start + self._played
        ts = self._anchor + pts
        if self.live:
            ts = max(ts, self._last + 1e-3)
        self._last = ts
        return ts

    def end_pass(self, last_pts: float | None, frame_s: float) -> None:
        """A connection, or a pass over a file, has ended: a looping file's next pass starts `frame_s` after it."""
        if not self.live and self._anchor is not None and last_pts is not None:
            self._played += last_pts + frame_s
        self._anchor = None


def recording_start(container: av.container.InputContainer) -> float | None:
    """The container's ``creation_time`` tag (MP4, MOV, MKV: when the camera started recording) as unix seconds;
    None when it has none, or one that cannot be a recording's (unparseable, before 2000)."""
    for metadata in (container.metadata, container.streams.video[0].metadata):
        text = metadata.get("creation_time")
        if not text:
            continue
        try:
            ts = parse_utc(text).timestamp()
        except ValueError:
            continue
        if ts >= _EARLIEST_RECORDING:
            return ts
    return None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
