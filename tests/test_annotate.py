"""`fervid demo --annotate OUT.mp4`: the analysed frames come back as a video with the faces drawn on them."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from fervid_cli import fervid

from detector.annotate import FaceLabel, FrameAnnotator
from fervid.sample import make_sample_clip


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def ring(image: np.ndarray, box: tuple[float, ...], width: int = 5) -> np.ndarray:
    """The pixels within `width` of the box's outline, where BoxAnnotator draws."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    mask = np.zeros(image.shape[:2], bool)
    mask[max(0, y1 - width) : y2 + width, max(0, x1 - width) : x2 + width] = True
    mask[y1 + width : y2 - width, x1 + width : x2 - width] = False
    return image[mask].astype(np.int16)


def test_demo_writes_an_annotated_video(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    truth = make_sample_clip(clip, seconds=1.0, fps=30)
    out = tmp_path / "annotated.mp4"
    result = fervid(
        "demo", str(clip), "--fps", "10", "--annotate", str(out), "--data-dir", str(tmp_path / "data"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    annotated = frames_of(out)
    source = frames_of(clip)[::3]  # what ingest kept at 10 fps from 30 fps
    assert len(annotated) == len(source) == 10
    for k, (drawn, plain) in enumerate(zip(annotated, source, strict=True)):
        boxes = truth.boxes[3 * k]
        # Boxes drawn where the faces are...
        assert all(np.abs(ring(drawn, b) - ring(plain, b)).mean() > 15 for b in boxes), k
        # ...and a strip far below the faces left as it was (re-encoding noise only).
        assert np.abs(drawn[430:470].astype(np.int16) - plain[430:470]).mean() < 3, k


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no/such/dir/out.mp4", "directory no/such/dir does not exist"),
        ("out.txt", "use a video file name ending in .mp4"),
    ],
)
def test_annotate_to_a_bad_path_is_one_line(tmp_path: Path, target: str, message: str) -> None:
    clip = tmp_path / "clip.mp4"
    make_sample_clip(clip, seconds=0.2, fps=10)
    result = fervid("demo", str(clip), "--annotate", target, "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "data" / "fervid.db").exists()  # refused before running anything


@pytest.mark.parametrize(
    ("label", "probabilities", "error"),
    [
        ("happy", (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0), None),
        ("gleeful", (0.0,) * 7, "label must be one of"),
        ("sad", (1.0,), "expected 7"),
    ],
)
def test_face_label_is_validated(label: str, probabilities: tuple[float, ...], error: str | None) -> None:
    def make() -> FaceLabel:
        return FaceLabel((10, 10, 50, 60), 7, label, probabilities)

    if error is None:
        image = np.zeros((120, 160, 3), np.uint8)
        drawn = FrameAnnotator().annotate(image, [make()])
        assert drawn[10:60, 10].any() and not image.any()  # drawn on a copy
    else:
        with pytest.raises(ValueError, match=error):
            make()
