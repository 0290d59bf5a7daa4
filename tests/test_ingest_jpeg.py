"""JPEG straight from the decoder's YUV planes: what the detector decodes (its own decode_jpeg, cv2.imdecode)
must be the image PyAV's BGR conversion gives, at every size, range and pixel format; and the publisher's
helper threads must keep frames in order and hand errors back."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import redis

from detector.worker import decode_jpeg
from fervid.bus import Bus, iter_entries
from fervid.contracts import FrameMsg, FrameRef, Keys
from fervid.settings import Settings
from ingest.jpeg import encode_frame, target_size
from ingest.publisher import FramePublisher

KEYS = Keys()  # the default namespace


@pytest.fixture(scope="module")
def real_frames(sample_clip: tuple[Path, object]) -> list[av.VideoFrame]:
    """Decoded frames of the sample clip (real faces, H.264, yuv420p limited range, as cameras send)."""
    with av.open(str(sample_clip[0])) as c:
        return list(itertools.islice(c.decode(video=0), 12))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.PSNR(a, b))


@pytest.mark.parametrize(
    ("fmt", "size", "max_size"),
    [
        ("yuv420p", None, 1280),  # the camera case: limited range, no resize
        ("yuvj420p", None, 1280),  # full range (MJPEG webcams): planes go in as they are
        ("yuv420p", (641, 481), 1280),  # odd sizes: chroma planes are rounded up
        ("yuv420p", None, 320),  # downscaled in YUV by swscale
        ("nv12", None, 1280),  # hardware decoders' format: converted to yuv420p first
        ("yuv444p", None, 1280),
        ("rgb24", None, 1280),
    ],
)
def test_jpeg_decodes_to_the_image_pyav_converts(
    real_frames: list[av.VideoFrame], fmt: str, size: tuple[int, int] | None, max_size: int
) -> None:
    for i, src in enumerate(real_frames[::4]):
        w, h = size or (src.width, src.height)
        frame = src.reformat(width=w, height=h, format=fmt)
        jpeg, tw, th = encode_frame(frame, max_size, 90)
        assert (tw, th) == target_size(w, h, max_size)
        image = decode_jpeg(FrameMsg(FrameRef("c", i, 0.0, tw, th), jpeg))  # the detector's own decoding
        reference = frame.to_ndarray(format="bgr24")
        if (tw, th) != (w, h):
            reference = cv2.resize(reference, (tw, th), interpolation=cv2.INTER_AREA)
        # JPEG at q90 alone leaves 41-46 dB here; without the range conversion (Y 16-235 read as 0-255) it is ~36.
        assert psnr(image, reference) > 39.5, (fmt, psnr(image, reference))


def test_full_range_flag_is_honoured(real_frames: list[av.VideoFrame]) -> None:
    """yuv420p flagged full range (JPEG range) must not be stretched a second time."""
    frame = real_frames[0].reformat(format="yuvj420p")
    planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes]
    flagged = av.VideoFrame(frame.width, frame.height, "yuv420p")
    for dst, src in zip(flagged.planes, planes, strict=True):
        np.frombuffer(dst, np.uint8).reshape(dst.height, dst.line_size)[:, : dst.width] = src
    flagged.color_range = 2  # AVCOL_RANGE_JPEG
    jpeg, _w, _h = encode_frame(flagged, 1280, 90)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert psnr(image, frame.to_ndarray(format="bgr24")) > 39.5


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_publisher_keeps_order_and_sequence_with_helper_threads(
    real_frames: list[av.VideoFrame], redis_client: redis.Redis, settings: Settings, threads: int
) -> None:
    pub = FramePublisher(Bus(redis_client, "ingest"), "order", settings, live=True, threads=threads)
    try:
        for k in range(40):
            pub.publish(real_frames[k % len(real_frames)], 1000.0 + k)
        pub.flush()
    finally:
        pub.close()
    refs = [FrameMsg.decode(f).frame for _, f in iter_entries(redis_client, KEYS.frames("order"))]
    assert [r.seq for r in refs] == list(range(40))
    assert [r.capture_ts for r in refs] == [1000.0 + k for k in range(40)]
    assert redis_client.hget(KEYS.camera("order", "stats"), "last_seq") == b"39"
    assert pub.counters.published == 40 and (pub.counters.first_seq, pub.counters.last_seq) == (0, 39)
    # A new publisher (a reconnect, a restarted process) continues the sequence.
    again = FramePublisher(Bus(redis_client, "ingest"), "order", settings, live=True, threads=threads)
    again.publish(real_frames[0], 2000.0)
    again.flush()
    again.close()
    assert again.counters.last_seq == 40


def test_an_encoding_error_reaches_the_caller_and_later_frames_keep_their_order(
    real_frames: list[av.VideoFrame], redis_client: redis.Redis, settings: Settings
) -> None:
    pub = FramePublisher(Bus(redis_client, "ingest"), "errs", settings, live=True, threads=2)
    try:
        pub.publish(real_frames[0], 1.0)
        pub.publish(np.zeros((0, 0, 3), np.uint8), 2.0)  # nothing to encode
        with pytest.raises(ValueError, match="empty 0x0 frame"):
            pub.publish(real_frames[1], 3.0)
            pub.publish(real_frames[2], 4.0)
            pub.flush()
        pub.flush()
    finally:
        pub.close()
    stamps = [FrameMsg.decode(f).frame.capture_ts for _, f in iter_entries(redis_client, KEYS.frames("errs"))]
    assert stamps[0] == 1.0 and 2.0 not in stamps and stamps == sorted(stamps)
