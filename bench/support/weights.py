"""RetinaFace-ResNet50 weights that are RANDOM, written where the real loading path reads
a downloaded file from, so benchmarks time the real architecture offline (its boxes mean nothing)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path


def random_resnet50_weights() -> Path:
    """A torch.hub-style zip of a seeded random RetinaFace-ResNet50 state dict, in a new temporary directory."""
    import torch

    from detector.retinaface import RetinaFaceNet

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(RetinaFaceNet("resnet50").state_dict(), buf)
    path = Path(tempfile.mkdtemp()) / "retinaface_resnet50_random.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("retinaface_resnet50_random.pth", buf.getvalue())
    return path
