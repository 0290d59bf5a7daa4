"""JPEG-encoding decoded video frames straight from their YUV 4:2:0 planes (libjpeg-turbo through simplejpeg).

H.264 decoders hand out YUV 4:2:0 and JPEG stores YCbCr 4:2:0: converting to BGR only for the JPEG encoder to
convert back (what ``cv2.imencode`` needs) was about half of ingest's per-frame cost. The one difference is the
range: video is usually limited range (Y 16-235) and JPEG is full range (0-255), so the planes go through a
lookup table first, as FFmpeg's own conversion would. Both use the BT.601 matrix, which JPEG decoders assume;
a source flagged BT.709 is encoded with it unchanged (a hue difference of about one level, below the JPEG
error at quality 90).
"""

from __future__ import annotations

import av
import cv2
import numpy as np
import simplejpeg

# Limited → full range, the formulas of FFmpeg's swscale (and of the BGR conversion the decoder would do).
_LUMA = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
_CHROMA = np.clip(np.round((np.arange(256) - 128) * 255 / 224 + 128), 0, 255).astype(np.uint8)
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG
_DIRECT = ("yuv420p", "yuvj420p")  # formats whose planes libjpeg-turbo takes as they are


def target_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """Longest side at most `max_size`, aspect ratio kept."""
    if width < 1 or height < 1:
        raise ValueError(f"cannot encode an empty {width}x{height} frame")
    scale = max_size / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_frame(frame: av.VideoFrame, max_size: int, quality: int) -> tuple[bytes, int, int]:
    """JPEG (4:2:0, baseline) of a decoded frame, downscaled to `max_size`; returns (jpeg, width, height)."""
    w, h = target_size(frame.width, frame.height, max_size)
    fmt = frame.format.name
    if (w, h) != (frame.width, frame.height) or fmt not in _DIRECT:
        # swscale resizes (and converts hardware or packed formats) in YUV, without a trip through BGR.
        frame = frame.reformat(width=w, height=h, format=fmt if fmt in _DIRECT else "yuv420p", interpolation="AREA")
        fmt = frame.format.name
    y, u, v = (_plane(p) for p in frame.planes[:3])
    if fmt != "yuvj420p" and frame.color_range != _FULL_RANGE:
        y, u, v = cv2.LUT(y, _LUMA), cv2.LUT(u, _CHROMA), cv2.LUT(v, _CHROMA)
    else:
        y, u, v = (np.ascontiguousarray(p) for p in (y, u, v))
    return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=quality), w, h


def fit(image: np.ndarray, max_size: int) -> np.ndarray:
    """`image` downscaled (INTER_AREA) to `target_size`, or itself when it already fits."""
    h, w = image.shape[:2]
    size = target_size(w, h, max_size)
    return image if size == (w, h) else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def encode_bgr(image: np.ndarray, max_size: int, quality: int) -> tuple[bytes, int, int]:
    """JPEG of a BGR image (sources that hand out pixels, not frames), downscaled to `max_size`."""
    image = fit(image, max_size)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a {image.shape} image")
    return jpeg.tobytes(), image.shape[1], image.shape[0]


def _plane(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """A (height, width) view of a plane, without its row padding."""
    return np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
