"""FER-2013-style datasets: the original CSV and the ImageFolder layouts Kaggle mirrors ship.

Everything is mapped onto the canonical 7 FER-2013 classes in FER-2013's own label order, so
label 3 is "happy" whichever source a checkpoint was trained from. Bad inputs fail early with
an error that names the offending file, folder or CSV row: a silently mislabelled or truncated
dataset would otherwise only show up as a mysteriously poor model hours later.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_SIZE = 48
FER_COLUMNS = ("emotion", "pixels", "Usage")
FER_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}

# Folder names seen in FER-2013 / CK+ / JAFFE / AffectNet mirrors. Only unambiguous synonyms:
# "calm" or "contempt" are different expressions and are rejected rather than guessed.
ALIASES: dict[str, str] = {
    **{c: c for c in CLASSES},
    "anger": "angry",
    "angered": "angry",
    "disgusted": "disgust",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "happiness": "happy",
    "joy": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "neutrality": "neutral",
}

SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


class DataError(ValueError):
    """A dataset on disk is malformed; the message names the file, folder or row."""


def canonical_class(folder_name: str) -> str | None:
    return ALIASES.get(folder_name.strip().lower())


@dataclass
class Split:
    """Samples of one split: either in-memory 48x48 arrays (CSV) or image paths (folders)."""

    name: str
    targets: np.ndarray  # int64 labels into CLASSES
    images: np.ndarray | None = None  # (N, H, W) uint8
    paths: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: np.ndarray, name: str) -> Split:
        return Split(
            name=name,
            targets=self.targets[indices],
            images=None if self.images is None else self.images[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
        )

    def class_counts(self, num_classes: int = len(CLASSES)) -> np.ndarray:
        return np.bincount(self.targets, minlength=num_classes)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split | None
    source: str
    val_carved: bool
    classes: tuple[str, ...] = CLASSES
    warnings: list[str] = field(default_factory=list)

    def get(self, split: str) -> Split:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test; got {split!r}")
        s = getattr(self, split)
        if s is None:
            raise DataError(f"{self.source} has no {split!r} split")
        return s


class FaceDataset(Dataset[tuple[torch.Tensor, int]]):
    """Yields (transformed image, label). Images are decoded as 8-bit grayscale PIL images."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], torch.Tensor] | None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def load_image(self, index: int) -> Image.Image:
        if self.split.images is not None:
            return Image.fromarray(self.split.images[index])  # 2-D uint8 -> mode "L"
        assert self.split.paths is not None
        path = self.split.paths[index]
        try:
            with Image.open(path) as im:
                return im.convert("L")
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise DataError(f"corrupt or unreadable image {path}: {exc}") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load_image(index)
        label = int(self.split.targets[index])
        if self.transform is None:
            return v2.functional.pil_to_tensor(image), label
        return self.transform(image), label


# ----------------------------------------------------------------------------------------------
# Loading


def _check_classes(counts: np.ndarray, where: str, allow_missing: bool, warnings: list[str]) -> None:
    missing = [CLASSES[i] for i, n in enumerate(counts) if n == 0]
    if not missing:
        return
    msg = f"{where}: no samples for class(es) {', '.join(missing)}"
    if not allow_missing:
        raise DataError(msg + " (pass allow_missing_classes=True / --allow-missing-classes to accept)")
    log.warning(msg)
    warnings.append(msg)


def load_fer_csv(path: Path) -> dict[str, Split]:
    """Parse fer2013.csv (`emotion,pixels,Usage`). Rows are validated one by one."""
    # The pixel column is a long string; the default field limit is fine but be explicit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    per_split: dict[str, tuple[list[np.ndarray], list[int]]] = {s: ([], []) for s in FER_USAGE.values()}
    n_pixels = FER_SIZE * FER_SIZE
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty CSV file")
        header = [h.strip() for h in header]
        lowered = [h.lower() for h in header]
        if sorted(lowered) != sorted(c.lower() for c in FER_COLUMNS):
            raise DataError(f"{path}: expected columns {','.join(FER_COLUMNS)}, found {','.join(header) or '(none)'}")
        # By name: Kaggle's icml_face_data.csv orders them emotion, Usage, pixels.
        pos = [lowered.index(c.lower()) for c in FER_COLUMNS]
        for row_no, row in enumerate(reader, start=1):
            line = row_no + 1  # 1-based file line, header is line 1
            where = f"{path} row {row_no} (line {line})"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 3:
                raise DataError(f"{where}: expected 3 fields, got {len(row)}")
            emotion, pixels, usage = (row[i].strip() for i in pos)
            try:
                label = int(emotion)
            except ValueError:
                raise DataError(f"{where}: emotion {emotion!r} is not an integer") from None
            if not 0 <= label < len(CLASSES):
                raise DataError(f"{where}: emotion {label} outside 0..{len(CLASSES) - 1}")
            if usage not in FER_USAGE:
                raise DataError(f"{where}: Usage {usage!r} not one of {', '.join(FER_USAGE)}")
            values = pixels.split()
            if len(values) != n_pixels:
                raise DataError(
                    f"{where}: pixel string has {len(values)} values, expected {n_pixels} ({FER_SIZE}x{FER_SIZE})"
                )
            try:
                arr = np.array(values, dtype=np.int64)
            except ValueError:
                raise DataError(f"{where}: pixel string contains non-integer values") from None
            if arr.min() < 0 or arr.max() > 255:
                raise DataError(f"{where}: pixel values outside 0..255")
            images, labels = per_split[FER_USAGE[usage]]
            images.append(arr.astype(np.uint8).reshape(FER_SIZE, FER_SIZE))
            labels.append(label)
    out: dict[str, Split] = {}
    for name, (images, labels) in per_split.items():
        if labels:
            out[name] = Split(name, np.array(labels, dtype=np.int64), images=np.stack(images))
    return out


def _verify_image(path: Path) -> None:
    # verify() walks the whole file (PNG CRCs included) without decoding pixels: cheap enough
    # for FER-sized sets and it turns a crash mid-epoch into an error before training starts.
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image {path}: {exc}") from exc


def load_image_folder_split(split_dir: Path, name: str, verify: bool = True) -> Split:
    """`split_dir/<class>/*.png`, class folder names mapped through ALIASES."""
    seen: dict[str, Path] = {}
    paths: list[Path] = []
    targets: list[int] = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        canon = canonical_class(class_dir.name)
        if canon is None:
            raise DataError(
                f"unknown class folder {class_dir}: expected one of {', '.join(CLASSES)} "
                f"or an alias ({', '.join(sorted(k for k in ALIASES if k not in CLASSES))})"
            )
        if canon in seen:
            raise DataError(f"{class_dir} and {seen[canon]} both map to class {canon!r}")
        seen[canon] = class_dir
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"empty class folder {class_dir}: no image files")
        for f in files:
            if verify:
                _verify_image(f)
            paths.append(f)
            targets.append(CLASSES.index(canon))
    if not paths:
        raise DataError(f"{split_dir}: no class folders with images")
    return Split(name, np.array(targets, dtype=np.int64), paths=paths)


def _find_split_dir(root: Path, split: str) -> Path | None:
    for candidate in SPLIT_DIRS[split]:
        for p in (root / candidate, root / candidate.capitalize()):
            if p.is_dir():
                return p
    return None


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a stratified validation split off `split` (deterministic for a seed)."""
    if not 0 < fraction < 1:
        raise ValueError(f"val fraction must be in (0, 1); got {fraction}")
    rng = np.random.default_rng(seed)
    val_idx: list[int] = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(split.targets == c)
        if len(idx) < 2:
            continue  # cannot both train and validate on a single sample
        rng.shuffle(idx)
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val_idx.extend(idx[:k].tolist())
    val_mask = np.zeros(len(split), dtype=bool)
    val_mask[val_idx] = True
    return (
        split.subset(np.flatnonzero(~val_mask), "train"),
        split.subset(np.flatnonzero(val_mask), "val"),
    )


def load_splits(
    path: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    allow_missing_classes: bool = False,
    verify_images: bool = True,
) -> Splits:
    """Load a FER-2013 CSV (file, or a folder holding fer2013.csv) or an ImageFolder tree.

    Without a validation split one is carved, stratified and seeded, from train; test is
    optional (evaluation on it then fails with a clear error).
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"dataset path {root} does not exist")
    warnings: list[str] = []
    csv_path: Path | None = None
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root}: expected a FER-2013 .csv file or a dataset folder")
        csv_path = root
    elif _find_split_dir(root, "train") is None:
        csvs = sorted(root.glob("*.csv"))
        if len(csvs) == 1:
            csv_path = csvs[0]
        else:
            raise DataError(f"{root}: expected a train/ folder (ImageFolder layout) or one FER-2013 .csv file")

    if csv_path is not None:
        parts = load_fer_csv(csv_path)
        source = str(csv_path)
        if "train" not in parts:
            raise DataError(f"{csv_path}: no rows with Usage=Training")
    else:
        parts = {}
        for split in ("train", "val", "test"):
            d = _find_split_dir(root, split)
            if d is not None:
                parts[split] = load_image_folder_split(d, split, verify=verify_images)
        source = str(root)

    train = parts["train"]
    val = parts.get("val")
    carved = val is None
    if val is None:
        train, val = stratified_split(train, val_fraction, seed)
    test = parts.get("test")
    for name, s in (("train", train), ("val", val), ("test", test)):
        if s is not None:
            _check_classes(s.class_counts(), f"{source} [{name}]", allow_missing_classes, warnings)
    return Splits(train=train, val=val, test=test, source=source, val_carved=carved, warnings=warnings)


# ----------------------------------------------------------------------------------------------
# Transforms


class ToChannels(torch.nn.Module):
    """Replicate a 1-channel image to `channels` (grayscale faces into ImageNet backbones)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3] == self.channels:
            return x
        if x.shape[-3] == 1:
            return x.expand(*x.shape[:-3], self.channels, *x.shape[-2:]).clone()
        if x.shape[-3] == 3 and self.channels == 1:
            return v2.functional.rgb_to_grayscale(x)
        raise ValueError(f"cannot map {x.shape[-3]} channels to {self.channels}")


def train_transform(input_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    # Mild augmentation: faces are already detector-aligned crops, so heavy crops or rotations
    # would cut off the mouth/brows that carry the expression.
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(input_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(10),
            v2.ColorJitter(brightness=0.3, contrast=0.3),
            ToChannels(channels),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
            v2.RandomErasing(p=0.25, scale=(0.02, 0.12), value=0),
        ]
    )


def eval_transform(input_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(input_size, antialias=True),
            v2.CenterCrop(input_size),
            ToChannels(channels),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class _Stack(torch.nn.Module):
    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(crops))


def tencrop_transform(input_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """(10, C, S, S): four corners + centre of an upscaled image, and their mirrors."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(input_size * 8 / 7), antialias=True),
            ToChannels(channels),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
            v2.TenCrop(input_size),
            _Stack(),
        ]
    )
