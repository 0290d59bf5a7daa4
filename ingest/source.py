"""Opening and decoding one video source with PyAV: files, RTSP cameras and V4L2 webcams.

Kinds of source form a small registry keyed by URL scheme (:data:`SOURCES`). Each entry says whether the source
is live, how FFmpeg opens it, how its URL is checked when a config loads, which per-source options apply, and how
to probe it cheaply (is it there at all?) between full opens. A new kind of source is one entry.
"""

from __future__ import annotations

import errno
import functools
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import av
import av.error
import numpy as np
from av.codec.hwaccel import HWAccel, hwdevices_available

from fervid.bus import redact_url
from fervid.errors import ConfigError, SourceError, cut

log = logging.getLogger(__name__)


class PermanentSourceError(SourceError):
    """Retrying soon will not help (wrong path, wrong credentials, not a video): retry slowly, say so clearly."""


class StallError(SourceError):
    """Packets keep coming but no frame decodes (or the source stopped delivering): the connection is useless."""


class DecodedFrame:
    """One decoded frame. The BGR conversion is lazy: frames the sampler skips never pay for it."""

    __slots__ = ("_frame", "_image", "pts")

    def __init__(self, frame: av.VideoFrame | np.ndarray, pts: float) -> None:
        self.pts = pts  # seconds since the start of the stream (or since connect, for live sources)
        self._frame = frame if not isinstance(frame, np.ndarray) else None
        self._image = frame if isinstance(frame, np.ndarray) else None

    @property
    def raw(self) -> av.VideoFrame | np.ndarray:
        """The frame as decoded (YUV, for the JPEG encoder), or the BGR image once converted."""
        if self._frame is not None:
            return self._frame
        assert self._image is not None
        return self._image

    @property
    def image(self) -> np.ndarray:
        """BGR uint8 (H, W, 3)."""
        if self._image is None:
            assert self._frame is not None
            self._image = self._frame.to_ndarray(format="bgr24")
            self._frame = None
        return self._image


# -- the kinds of source -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenOptions:
    """How to open a source, from its camera's config; each kind takes what applies to it."""

    timeout_s: float = 10.0  # connecting and reading the stream header
    read_timeout_s: float = 10.0  # every later read
    transport: str = "tcp"
    tls_verify: bool = True
    tls_ca_file: str | None = None


@dataclass(frozen=True)
class Input:
    """What ``av.open`` is given for a source."""

    target: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceType:
    kind: str  # in states and logs: file, rtsp, v4l2
    # A camera (wall-clock time, reconnects, drops its oldest frames when the pipeline is behind) or a recording
    # (its own time, read to the end, waits for room; can loop).
    live: bool
    input: Callable[[str, OpenOptions], Input]  # raises SourceError for what is not there
    # Why the source cannot be reached right now ('' when it can): a TCP connect, a path that exists. Cheap enough
    # to run every half second between full opens, so a camera's return is seen at once.
    probe: Callable[[str, float], str]
    check: Callable[[str], None]  # when a config loads: ValueError for a URL that can never work
    options: frozenset[str] = frozenset()  # per-source options that apply to it: "transport", "tls"


def _check_not_empty(url: str) -> None:
    if not url.strip():
        raise ValueError("the URL is empty")


def _file_path(url: str) -> str:
    return url.removeprefix("file://")


def _file_input(url: str, _: OpenOptions) -> Input:
    path = Path(_file_path(url))
    if not path.exists():
        raise SourceError(f"video file {url} does not exist")
    if path.is_dir():
        raise SourceError(f"{url} is a directory, not a video file")
    return Input(str(path))


def _file_probe(url: str, _: float) -> str:
    return "" if Path(_file_path(url)).exists() else f"video file {url} does not exist"


def _rtsp_input(url: str, o: OpenOptions) -> Input:
    if o.transport not in ("tcp", "udp"):
        raise SourceError(f"RTSP transport must be tcp or udp, got {cut(repr(o.transport))}")
    # Low-latency probing: the defaults spend ~1 s analysing a stream we already know is video.
    options = {
        "rtsp_transport": o.transport,
        "timeout": str(int(o.read_timeout_s * 1e6)),  # microseconds, for socket I/O
        "analyzeduration": "500000",
        "probesize": "500000",
        "fflags": "nobuffer",
    }
    if url.startswith("rtsps://"):
        options["tls_verify"] = "1" if o.tls_verify else "0"
        if o.tls_ca_file:
            options["ca_file"] = o.tls_ca_file
    return Input(url, options=options)


def _check_host(url: str) -> None:
    parts = urlsplit(url)
    try:
        _ = parts.port  # parsing it is the check: not a number, or out of range
    except ValueError:
        raise ValueError(f"{cut(redact_url(url))}: the port must be a number from 0 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{cut(redact_url(url))} has no host: use {parts.scheme}://[user:password@]host[:port]/path")


def _tcp_probe(default_port: int) -> Callable[[str, float], str]:
    def probe(url: str, timeout: float) -> str:
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname or "", parts.port or default_port), timeout=timeout):
                return ""
        except OSError as exc:
            return f"cannot connect to {redact_url(url)}: {exc.strerror or exc}"

    return probe


def v4l2_device(url: str) -> str:
    """``0`` → ``/dev/video0``; ``v4l2:///dev/video2`` → ``/dev/video2``; ``/dev/video1`` as is."""
    if url.isdigit():
        return f"/dev/video{int(url)}"
    return url.removeprefix("v4l2://")


def _v4l2_input(url: str, _: OpenOptions) -> Input:
    device = v4l2_device(url)
    if not Path(device).exists():
        raise SourceError(
            f"webcam {device} does not exist (is the camera plugged in, and passed to the container with "
            f"--device {device}?)"
        )
    if not Path(device).is_char_device():
        raise SourceError(f"webcam {device} is not a video device (not a character device)")
    return Input(device, format="v4l2")


def _v4l2_probe(url: str, _: float) -> str:
    device = v4l2_device(url)
    return "" if Path(device).exists() else f"webcam {device} does not exist"


def _v4l2_check(url: str) -> None:
    if not v4l2_device(url).strip():
        raise ValueError(f"{cut(url)} names no device: use v4l2:///dev/videoN, /dev/videoN or N")


# URL scheme → kind of source. A path without a scheme is a file, except /dev/videoN and N (webcams).
SOURCES: dict[str, SourceType] = {
    "file": SourceType("file", live=False, input=_file_input, probe=_file_probe, check=_check_not_empty),
    "rtsp": SourceType(
        "rtsp", live=True, input=_rtsp_input, probe=_tcp_probe(554), check=_check_host, options=frozenset({"transport"})
    ),
    "rtsps": SourceType(
        "rtsp",
        live=True,
        input=_rtsp_input,
        probe=_tcp_probe(322),
        check=_check_host,
        options=frozenset({"transport", "tls"}),
    ),
    "v4l2": SourceType("v4l2", live=True, input=_v4l2_input, probe=_v4l2_probe, check=_v4l2_check),
}

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def source_type(url: str) -> SourceType:
    """The registry's entry for `url`; ConfigError, listing what is known, for a scheme it does not have."""
    m = _SCHEME.match(url)
    if m:
        scheme = m.group(1).lower()
    elif url.isdigit() or url.startswith("/dev/video"):
        scheme = "v4l2"
    else:
        scheme = "file"
    if scheme not in SOURCES:
        known = ", ".join(f"{s}://" for s in SOURCES)
        raise ConfigError(
            f"unknown kind of source {cut(redact_url(url))!r}: use a video file, a webcam (/dev/videoN or N) or "
            f"a URL starting with {known}"
        )
    return SOURCES[scheme]


def checked_source(url: str) -> SourceType:
    """`url`'s kind of source, once its URL is known to be usable at all (RTSP: a host; V4L2: a device).
    Config loading and the command line check this, so a hopeless URL never reaches the retry loop.
    Raises ConfigError."""
    source = source_type(url)
    try:
        source.check(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return source


def is_live(url: str) -> bool:
    return source_type(url).live


# -- opening and decoding ------------------------------------------------------------------------------------


def open_container(
    url: str,
    *,
    timeout_s: float = 10.0,
    read_timeout_s: float | None = None,
    transport: str = "tcp",
    decoder_threads: int = 0,
    hwaccel: str | None = None,
    tls_verify: bool = True,
    tls_ca_file: str | None = None,
) -> av.container.InputContainer:
    """Open `url` or raise :class:`SourceError` with a one-line reason (credentials redacted).

    `timeout_s` bounds connecting and reading the header; `read_timeout_s` (default `timeout_s`) bounds every
    later read, so a camera that goes silent raises instead of blocking its thread forever. `hwaccel` (e.g.
    ``cuda``, ``vaapi``) decodes on that device when it can, and in software, with a warning, when it cannot.
    ``rtsps://``: the camera's certificate is verified against the system's CAs or `tls_ca_file`, unless
    `tls_verify` is off (cameras with self-signed certificates; FFmpeg itself would not verify at all).
    """
    source = source_type(url)
    read_timeout_s = timeout_s if read_timeout_s is None else read_timeout_s
    given = source.input(url, OpenOptions(timeout_s, read_timeout_s, transport, tls_verify, tls_ca_file))
    accel = hardware_decoder(hwaccel, redact_url(url)) if hwaccel else None
    started = time.monotonic()
    try:
        container = av.open(
            given.target, format=given.format, options=given.options, timeout=(timeout_s, read_timeout_s), hwaccel=accel
        )
    except av.error.HTTPUnauthorizedError as exc:
        raise PermanentSourceError(
            f"{redact_url(url)}: the camera rejected the credentials (401 Unauthorized)"
        ) from exc
    except av.error.HTTPForbiddenError as exc:
        raise PermanentSourceError(f"{redact_url(url)}: access to this stream is forbidden (403)") from exc
    except av.error.HTTPNotFoundError as exc:
        raise PermanentSourceError(f"{redact_url(url)}: no such stream path on the camera (404 Not Found)") from exc
    except av.error.PermissionError as exc:
        raise PermanentSourceError(f"cannot open {redact_url(url)}: permission denied") from exc
    except av.error.InvalidDataError as exc:
        if source.live and time.monotonic() - started >= 0.9 * timeout_s:
            raise SourceError(f"cannot open {redact_url(url)}: no answer within {timeout_s:g}s (timed out)") from exc
        if not source.live:
            raise PermanentSourceError(f"{url} is not a readable video file: {_reason(exc)}") from exc
        raise SourceError(f"cannot open {redact_url(url)}: {_reason(exc)}") from exc
    except (av.error.FFmpegError, OSError) as exc:
        if "tls" in source.options and tls_verify and getattr(exc, "errno", None) == errno.EIO:
            # GnuTLS reports a certificate it cannot verify as a bare I/O error.
            raise SourceError(
                f"cannot open {redact_url(url)}: TLS handshake failed ({_reason(exc)}); is the camera's certificate "
                "trusted? For a self-signed one set tls_ca_file, or tls_verify: false"
            ) from exc
        if source.live and time.monotonic() - started >= 0.9 * timeout_s:
            # FFmpeg reports an interrupted open as whatever it was parsing at the time ("Invalid data ...").
            raise SourceError(f"cannot open {redact_url(url)}: no answer within {timeout_s:g}s (timed out)") from exc
        raise SourceError(f"cannot open {redact_url(url)}: {_reason(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise PermanentSourceError(f"{redact_url(url)} has no video stream")
    stream = container.streams.video[0]
    # Files: frame + slice threads (decoding is otherwise single-core). Live streams: slice threads, and packets
    # may hold part of a frame: a camera that repeats SPS/PPS before each slice of a key frame (GStreamer's RTP
    # payloader does, with several slices per frame) has its key frames cut into one packet per slice, and a
    # decoder taking each packet for a whole frame hands out half-decoded frames, whose errors the following
    # frames of the GOP inherit: gray blocks and ghost faces (found by deploy/smoke.sh). `chunks` makes the
    # decoder assemble a frame from its slices (it turns frame threading off, hence slice threads).
    if source.live:
        stream.thread_type = "SLICE"
        stream.codec_context.flags2 |= av.codec.context.Flags2.chunks
    else:
        stream.thread_type = "AUTO"
    if decoder_threads:
        stream.codec_context.thread_count = decoder_threads
    if accel is not None and not stream.codec_context.is_hwaccel:
        _warn_once(url, f"{redact_url(url)}: {hwaccel} cannot decode {stream.codec_context.name}; decoding in software")
    return container


def hardware_decoder(kind: str, where: str = "") -> HWAccel | None:
    """A hardware decoder on device type `kind`, or None (and a warning saying why) when this machine has none."""
    problem = _hardware_problem(kind)
    if problem:
        _warn_once(f"{where} {kind}", f"{where}: {problem}; decoding in software")
        return None
    return HWAccel(kind, allow_software_fallback=True)


@functools.cache
def _hardware_problem(kind: str) -> str:
    """Why `kind` cannot decode here ('' when it can). Cached: creating a device costs up to a second."""
    built = hwdevices_available()
    if kind not in built:
        return f"hardware decoding '{kind}' is not in this FFmpeg build (it has: {', '.join(built) or 'none'})"
    try:
        # Creating the device is what fails on a machine without the hardware or its driver.
        HWAccel(kind, allow_software_fallback=False).create(av.codec.Codec("h264", "r"))
    except (av.error.FFmpegError, RuntimeError, OSError) as exc:
        return f"hardware decoding '{kind}' is unavailable: cannot open the device ({_reason(exc)})"
    return ""


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """A configuration problem is worth one warning per source, not one per reconnect."""
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def decode(
    container: av.container.InputContainer, url: str = "", *, stall_s: float | None = None
) -> Iterator[DecodedFrame]:
    """Decode the first video stream. Corrupt packets are skipped; a broken source raises SourceError.

    `stall_s`: raise :class:`StallError` when packets arrive but no frame decodes for that long (the read
    timeout given to :func:`open_container` covers a source that sends nothing at all).
    """
    stream = container.streams.video[0]
    time_base = float(stream.time_base) if stream.time_base else 1 / 30
    start = stream.start_time or 0
    fallback_pts = 0.0
    rate = float(stream.average_rate or 30)
    last_frame = time.monotonic()
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                log.warning("%s: skipping a corrupt packet: %s", redact_url(url), _reason(exc))
                frames = []
            now = time.monotonic()
            if not frames:
                if stall_s is not None and now - last_frame > stall_s:
                    raise StallError(f"{redact_url(url)}: no frame decoded for {now - last_frame:.0f}s")
                continue
            last_frame = now
            for frame in frames:
                pts = (frame.pts - start) * time_base if frame.pts is not None else fallback_pts
                fallback_pts = pts + 1 / rate
                yield DecodedFrame(frame, pts)
    except av.error.ExitError as exc:  # the read timeout given to av.open interrupted a blocked read
        raise SourceError(f"{redact_url(url)}: no data from the source (read timed out)") from exc
    except av.error.FFmpegError as exc:
        raise SourceError(f"{redact_url(url)}: read failed: {_reason(exc)}") from exc


def probe_file(url: str) -> float:
    """Fail fast on a file that is not a readable video; returns its duration in seconds (0 if unknown)."""
    with open_container(url) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration or 0) / 1e6


_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")


def redact_text(text: str) -> str:
    """Redact credentials of every URL inside `text` (FFmpeg's messages quote the URL they failed on)."""
    return _CREDENTIALS.sub(r"\1***@", text)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return redact_text(str(text))
