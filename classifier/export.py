"""Export a checkpoint to ONNX and check it against the PyTorch model."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from classifier import io
from classifier.checkpoint import load_checkpoint


@dataclass
class ExportResult:
    """Where the model went and how it was verified. os.PathLike, so it can stand in for the path."""

    path: Path
    structural_check: bool  # onnx.checker passed
    numeric_check: bool  # outputs compared with onnxruntime
    max_abs_diff: float | None
    note: str

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def export_onnx(ckpt: str | Path, out: str | Path, *, opset: int = 17, atol: float = 1e-4) -> ExportResult:
    """Write `out` (.onnx, dynamic batch; input "input" normalized (N,C,S,S), output "logits").

    The structural check (onnx.checker) always runs. The numeric check runs when onnxruntime
    is importable and raises if outputs differ by more than `atol`; otherwise the result says
    it was skipped.
    """
    model, meta = load_checkpoint(ckpt)
    model = model.float().eval()
    out = Path(out)
    x = torch.randn(2, meta.channels, meta.input_size, meta.input_size, generator=torch.Generator().manual_seed(0))
    with io.atomic_path(out) as tmp:
        # dynamo=False: the TorchScript exporter needs no onnxscript (not installed) and handles
        # every registered architecture.
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        import onnx

        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        # Carry the preprocessing contract with the graph, for non-Python consumers.
        for k, v in {
            "model_name": meta.model_name,
            "classes": ",".join(meta.classes),
            "input_size": str(meta.input_size),
            "channels": str(meta.channels),
            "mean": ",".join(map(str, meta.mean)),
            "std": ",".join(map(str, meta.std)),
        }.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, str(tmp))
        if importlib.util.find_spec("onnxruntime") is None:
            return _finish(out, None, "numeric check skipped: onnxruntime is not installed")
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        # A different batch size than the trace proves the dynamic axis works.
        x3 = torch.randn(3, meta.channels, meta.input_size, meta.input_size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = model(x3).numpy()
        got = session.run(["logits"], {"input": x3.numpy()})[0]
        diff = float(np.abs(ref - got).max())
        if not diff <= atol:
            raise RuntimeError(f"ONNX output differs from PyTorch by {diff:.3g} (> {atol})")
    return _finish(out, diff, f"onnxruntime outputs match PyTorch (max |diff| {diff:.2e})")


def _finish(out: Path, diff: float | None, note: str) -> ExportResult:
    return ExportResult(path=out, structural_check=True, numeric_check=diff is not None, max_abs_diff=diff, note=note)
