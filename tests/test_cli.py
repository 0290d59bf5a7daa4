"""The CLI's bad-input paths: one line naming the problem, a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from fervid_cli import fervid


def empty_video(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 64
    return path


def tiny_video(path: Path) -> Path:
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 64
        for _ in range(5):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24")))
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["demo", "missing.mp4"], "video file missing.mp4 does not exist", 2),
        (["demo", "notvideo.mp4"], "notvideo.mp4 is not a readable video file", 2),
        (["demo", "empty.mp4"], "empty.mp4", 2),
        (["demo", "notvideo.mp4", "--db", "mysql://x"], "database", 2),
        (
            ["demo", "tiny.mp4", "--redis", "redis://:pw@127.0.0.1:1/0"],  # a good file: files are checked first
            "cannot reach Redis at redis://***@127.0.0.1:1/0",
            2,
        ),
        (["demo", "a.mp4", "b.mp4", "--camera", "one"], "1 --camera names for 2 sources", 2),
        (["timeline", "nowhere", "--db", "sqlite:///db.sqlite"], "unknown camera 'nowhere'", 1),
        (
            ["timeline", "x", "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/x"],
            "cannot reach the database at postgresql+psycopg://***@127.0.0.1:1/x",
            2,
        ),
        (["timeline", "x", "--bucket", "5 parsecs"], "invalid duration", 2),
        (["timeline", "x", "--format", "xml"], "'xml' is not one of 'table', 'json', 'csv'", 2),
        (["timeline", "x", "--db", "sqlite:///typo.sqlite"], "no such database typo.sqlite", 1),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(tmp_path: Path, args: list[str], message: str, code: int) -> None:
    (tmp_path / "notvideo.mp4").write_text("hello, not a video")
    empty_video(tmp_path / "empty.mp4")
    tiny_video(tmp_path / "tiny.mp4")
    assert fervid("migrate", "--db", "sqlite:///db.sqlite", cwd=tmp_path).returncode == 0  # an empty fervid database
    result = fervid(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert message in " ".join(result.stderr.replace("│", " ").split())
    assert "secret" not in result.stderr


def test_every_command_has_help(tmp_path: Path) -> None:
    import typer.main

    from fervid.cli import app

    commands = typer.main.get_group(app).commands
    assert {"demo", "timeline"} <= set(commands)
    for name in commands:
        result = fervid(name, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "usage" in result.stdout.lower(), name


def test_train_evaluate_export_through_the_cli(tmp_path: Path) -> None:
    """The study's commands end to end on a small generated ImageFolder (the functions have their own tests)."""
    from synthetic_faces import write_image_folder

    data = write_image_folder(tmp_path / "faces", n_train=12, n_test=4)
    run = fervid(
        "train", "--model", "vgg1", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "curves.png").is_file()
    ev = fervid("evaluate", str(tmp_path / "run" / "best.pt"), "--data", str(data), cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    import json

    assert 0.0 <= json.loads(ev.stdout)["accuracy"] <= 1.0
    ex = fervid("export", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "m.onnx"), cwd=tmp_path)
    assert ex.returncode == 0, ex.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_compare_passes_the_training_flags_to_every_model(tmp_path: Path) -> None:
    import json

    from synthetic_faces import write_image_folder

    data = write_image_folder(tmp_path / "faces", n_train=8, n_test=2)
    args = (
        "--data",
        str(data),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "cmp"),
        "--batch-size",
        "16",
        "--freeze-epochs",
        "1",
        "--no-amp",
    )
    run = fervid("compare", "--models", "vgg1", *args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "cmp" / "vgg1" / "config.json").read_text())
    assert (config["batch_size"], config["freeze_epochs"], config["amp"], config["weights"]) == (16, 1, False, "none")
    assert "| vgg1 |" in (tmp_path / "cmp" / "comparison.md").read_text()
