"""Face crops: square, margin-expanded, size-normalised; and a quality score, stored with each event so that
small or blurry faces can be filtered out."""

from __future__ import annotations

import cv2
import numpy as np

from detector.base import Detection


def square_crop(image: np.ndarray, det: Detection, size: int, margin: float) -> np.ndarray:
    """A `size`x`size` crop centred on the box, its side the box's longer side plus `margin` of it on each side.

    Parts outside the frame are filled by edge replication rather than black, which the classifiers would
    otherwise read as a (dark) feature.
    """
    cx, cy = (det.x1 + det.x2) / 2, (det.y1 + det.y2) / 2
    side = max(det.width, det.height) * (1 + 2 * margin)
    x1, y1 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x2, y2 = x1 + int(round(side)), y1 + int(round(side))
    h, w = image.shape[:2]
    pad = max(0, -x1, -y1, x2 - w, y2 - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 + pad, y2 + pad
    crop = image[y1:y2, x1:x2]
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def quality(crop: np.ndarray, det: Detection, good_size: float = 64.0, good_sharpness: float = 100.0) -> float:
    """In [0, 1]: the product of a size term (box side / `good_size`) and a sharpness term (variance of the
    Laplacian / `good_sharpness`), each capped at 1. Small or blurry faces score low."""
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    size_term = min(1.0, min(det.width, det.height) / good_size)
    return round(size_term * min(1.0, sharpness / good_sharpness), 4)
