"""`fervid timeline CAMERA --plot out.png`: the stacked emotion timeline, checked by reading its pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from fervid.cli import app as cli_app
from fervid.contracts import EMOTIONS, Box, Emotion, EventsMsg, FrameRef
from storage.db import create_schema, insert_idempotent, make_engine
from storage.plot import COLOURS

T0 = 1_764_028_800.0  # 2025-11-25T00:00:00Z


def faces_feeling(emotion: str, seqs: range) -> list[EventsMsg]:
    probs = tuple(0.88 if e == emotion else 0.02 for e in EMOTIONS)
    return [
        EventsMsg(
            frame=FrameRef("plotcam", s, T0 + s, 640, 480),
            detector="haar",
            model="mini_xception",
            emotions=(Emotion(index=0, box=Box(1, 1, 20, 20), score=0.9, probs=probs, track_id=1),),
        )
        for s in seqs
    ]


def blended(hex_colour: str, alpha: float = 0.85) -> tuple[int, int, int]:
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    r, g, b = (round(alpha * c + (1 - alpha) * 255) for c in rgb)
    return r, g, b


def share_of(img: Image.Image, colour: tuple[int, int, int], x0: float, x1: float) -> float:
    """Fraction of the pixels in the vertical band [x0, x1) of the image width that have `colour` (±6)."""
    w, h = img.size
    band = np.asarray(img.crop((int(x0 * w), 0, int(x1 * w), h)), dtype=int)
    return float((np.abs(band - np.array(colour)) <= 6).all(axis=-1).mean())


def test_timeline_plot_shows_the_stacked_shares(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    engine = make_engine(db)
    create_schema(engine)
    insert_idempotent(
        engine, faces_feeling("happy", range(0, 120)) + faces_feeling("sad", range(120, 240))
    )  # 2 min each
    out = tmp_path / "plots" / "t.png"
    window = ["--since", "2025-11-25T00:00:00", "--until", "2025-11-25T00:04:00"]
    r = CliRunner().invoke(cli_app, ["timeline", "plotcam", "--bucket", "10s", *window, "--plot", str(out), "--db", db])
    assert r.exit_code == 0, r.output
    img = Image.open(out).convert("RGB")
    assert img.size[0] > 800 and img.size[1] > 300
    happy, sad = blended(COLOURS["happy"]), blended(COLOURS["sad"])
    # Inside the axes: the first half of the time axis is all happy, the second all sad (the legend is to the right).
    assert share_of(img, happy, 0.12, 0.35) > 0.5 and share_of(img, sad, 0.12, 0.35) < 0.01
    assert share_of(img, sad, 0.50, 0.75) > 0.5 and share_of(img, happy, 0.50, 0.75) < 0.01


def test_plot_of_an_empty_range_is_a_one_line_error(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    engine = make_engine(db)
    create_schema(engine)
    insert_idempotent(engine, faces_feeling("happy", range(0, 10)))
    args = [
        "timeline",
        "plotcam",
        "--since",
        "2025-11-26T00:00:00",
        "--until",
        "2025-11-26T01:00:00",
        "--plot",
        str(tmp_path / "none.png"),
        "--db",
        db,
    ]
    r = subprocess.run([sys.executable, "-m", "fervid.cli", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and not (tmp_path / "none.png").exists()
    assert "nothing to plot" in r.stderr and "Traceback" not in r.stderr
