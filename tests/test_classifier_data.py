"""Dataset loading from both on-disk formats, and clear errors for every kind of bad input."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_faces import write_fer_csv, write_image_folder

from classifier.checkpoint import CheckpointError, checkpoint_payload, load_checkpoint
from classifier.data import CLASSES, DataError, FaceDataset, eval_transform, load_splits, train_transform
from classifier.models import create_model, get_spec


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder") / "faces", n_train=6, n_test=3)


@pytest.fixture(scope="module")
def fer_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fer_csv(tmp_path_factory.mktemp("csv") / "fer2013.csv", n_train=6, n_val=2, n_test=2)


def test_image_folder_with_aliases_and_carved_val(folder: Path) -> None:
    assert (folder / "train" / "anger").is_dir() and (folder / "train" / "surprised").is_dir()
    splits = load_splits(folder, val_fraction=0.2, seed=3)
    assert splits.val_carved and splits.test is not None
    assert len(splits.train) + len(splits.val) == 6 * 7 and len(splits.test) == 3 * 7
    # Stratified: every class in both train and val.
    assert (splits.train.class_counts() > 0).all() and (splits.val.class_counts() > 0).all()
    # Alias folder "anger" -> canonical label 0.
    angry = [p for p, t in zip(splits.test.paths, splits.test.targets, strict=True) if t == CLASSES.index("angry")]
    assert angry and all(p.parent.name == "anger" for p in angry)
    again = load_splits(folder, val_fraction=0.2, seed=3)
    assert again.val.paths == splits.val.paths  # same seed, same carve


def test_fer_csv_splits(fer_csv: Path) -> None:
    splits = load_splits(fer_csv)
    assert not splits.val_carved
    assert (len(splits.train), len(splits.val), len(splits.test)) == (42, 14, 14)
    assert splits.train.images.shape == (42, 48, 48) and splits.train.images.dtype == np.uint8
    # A folder holding the CSV works too.
    assert len(load_splits(fer_csv.parent).train) == 42


@pytest.mark.parametrize("model", ["vgg1", "mobilenet_v2"])
def test_transforms_shape_and_range(fer_csv: Path, model: str) -> None:
    spec = get_spec(model)
    splits = load_splits(fer_csv)
    args = (spec.input_size, spec.channels, spec.mean, spec.std)
    for tf in (train_transform(*args), eval_transform(*args)):
        x, y = FaceDataset(splits.train, tf)[0]
        assert x.shape == (spec.channels, spec.input_size, spec.input_size) and x.dtype == torch.float32
        assert isinstance(y, int) and torch.isfinite(x).all()
    if spec.channels == 3:  # grayscale replicated
        x, _ = FaceDataset(splits.val, eval_transform(*args))[0]
        assert torch.allclose((x[0] * spec.std[0] + spec.mean[0]), (x[1] * spec.std[1] + spec.mean[1]), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Bad inputs: each row builds a broken dataset and names what the error must mention.


def _csv(rows: list[list[str]], header: list[str] | None = None) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        p = tmp / "fer2013.csv"
        with p.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header or ["emotion", "pixels", "Usage"])
            w.writerows(rows)
        return p

    return make


GOOD_PIXELS = " ".join(["128"] * 2304)


def _folder(mutate: Callable[[Path], str]) -> Callable[[Path], tuple[Path, str]]:
    def make(tmp: Path) -> tuple[Path, str]:
        root = tmp / "faces"
        write_image_folder(root, n_train=2, n_test=1)
        return root, mutate(root)

    return make


def _unknown_folder(root: Path) -> str:
    shutil.copytree(root / "train" / "neutral", root / "train" / "contempt")
    return str(root / "train" / "contempt")


def _empty_class(root: Path) -> str:
    for f in (root / "train" / "sad").iterdir():
        f.unlink()
    return str(root / "train" / "sad")


def _missing_class(root: Path) -> str:
    shutil.rmtree(root / "test" / "disgust")
    return "disgust"


def _corrupt_png(root: Path) -> str:
    bad = root / "train" / "happy" / "00003.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated mid-IDAT
    return str(bad)


def _garbage_png(root: Path) -> str:
    bad = root / "test" / "surprised" / "broken.png"
    bad.write_bytes(b"definitely not a png")
    return str(bad)


BAD_DATA = [
    pytest.param(
        _csv([["0", GOOD_PIXELS]], header=["label", "pixels"]),
        ["expected columns emotion,pixels,Usage", "found label,pixels"],
        id="csv-wrong-columns",
    ),
    pytest.param(
        _csv([["0", GOOD_PIXELS, "Training"], ["3", "1 2 3", "Training"]]),
        ["row 2 (line 3)", "3 values, expected 2304"],
        id="csv-short-pixels",
    ),
    pytest.param(_csv([["9", GOOD_PIXELS, "Training"]]), ["row 1", "emotion 9 outside 0..6"], id="csv-bad-label"),
    pytest.param(_csv([["1", GOOD_PIXELS, "Validation"]]), ["row 1", "Usage 'Validation'"], id="csv-bad-usage"),
    pytest.param(
        _csv([["1", GOOD_PIXELS, "Training"]]), ["no samples for class(es) angry, fear"], id="csv-missing-classes"
    ),
]
BAD_FOLDERS = [
    pytest.param(_folder(_unknown_folder), "unknown class folder", id="unknown-class-folder"),
    pytest.param(_folder(_empty_class), "empty class folder", id="empty-class"),
    pytest.param(_folder(_missing_class), "no samples for class(es) disgust", id="missing-class"),
    pytest.param(_folder(_corrupt_png), "corrupt or unreadable image", id="truncated-png"),
    pytest.param(_folder(_garbage_png), "corrupt or unreadable image", id="garbage-png"),
]


@pytest.mark.parametrize(("make", "expected"), BAD_DATA)
def test_bad_csv_errors(tmp_path: Path, make: Callable[[Path], Path], expected: list[str]) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_splits(path)
    for fragment in expected:
        assert fragment in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("make", "expected"), BAD_FOLDERS)
def test_bad_folder_errors(tmp_path: Path, make: Callable[[Path], tuple[Path, str]], expected: str) -> None:
    root, names = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_splits(root)
    assert expected in str(info.value)
    assert names in str(info.value)  # the offending file/folder/class is named


def test_missing_class_allowed_with_flag(tmp_path: Path) -> None:
    root, _ = _folder(_missing_class)(tmp_path)
    splits = load_splits(root, allow_missing_classes=True)
    assert splits.warnings and "disgust" in splits.warnings[0]
    assert splits.test.class_counts()[CLASSES.index("disgust")] == 0


def _ckpt(tmp: Path, model_name: str, classes: tuple[str, ...]) -> Path:
    spec = get_spec(model_name)
    model = create_model(model_name, num_classes=len(classes))
    path = tmp / f"{model_name}-{len(classes)}.pt"
    fields = {"model_name": model_name, "classes": classes, "epoch": 1, "metrics": {}, "config": {}}
    torch.save(checkpoint_payload(kind="best", model=model, **fields, **spec.input_format()), path)
    return path


BAD_CHECKPOINTS = [
    pytest.param(
        lambda t: load_checkpoint(_ckpt(t, "vgg1", CLASSES), expect_model="vgg2"),
        "checkpoint of model 'vgg1', expected 'vgg2'",
        id="other-model",
    ),
    pytest.param(
        lambda t: load_checkpoint(_ckpt(t, "vgg1", CLASSES[:6]), expect_classes=CLASSES),
        "trained on classes",
        id="other-class-set",
    ),
    pytest.param(
        lambda t: create_model("vgg3", weights=_ckpt(t, "vgg1", CLASSES)),
        "checkpoint of model 'vgg1', not 'vgg3'",
        id="init-from-other-model",
    ),
]


@pytest.mark.parametrize(("action", "expected"), BAD_CHECKPOINTS)
def test_wrong_checkpoint_errors(tmp_path: Path, action: Callable[[Path], object], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):  # CheckpointError is a ValueError
        action(tmp_path)


def test_evaluate_rejects_other_class_set(tmp_path: Path, fer_csv: Path) -> None:
    from classifier.evaluate import evaluate_checkpoint

    with pytest.raises(CheckpointError, match="trained on classes"):
        evaluate_checkpoint(_ckpt(tmp_path, "vgg1", CLASSES[:6]), fer_csv)


def test_fer_csv_columns_are_read_by_name(fer_csv: Path, tmp_path: Path) -> None:
    """Kaggle's icml_face_data.csv has the same columns as fer2013.csv in another order, with spaces."""
    with fer_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    icml = tmp_path / "icml_face_data.csv"
    with icml.open("w", newline="") as f:
        csv.writer(f).writerows([["emotion", " Usage", " pixels"]] + [[e, " " + u, " " + p] for e, p, u in rows[1:]])
    a, b = load_splits(fer_csv), load_splits(icml)
    assert (len(b.train), len(b.val), len(b.test)) == (42, 14, 14)
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.test.targets, b.test.targets)
