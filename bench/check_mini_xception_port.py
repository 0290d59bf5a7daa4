"""Compare classifier.mini_xception (PyTorch) against the original Keras model in fer's emotion_model.hdf5.

A one-off verification of the port, not a test: it needs TensorFlow, which fervid does not install. Make a
throwaway venv outside the repo (TF 2.21 / Keras 3.15 on Python 3.11 loads the Keras 2.0.5 HDF5 fine):

    python3 -m venv /tmp/kerasenv
    /tmp/kerasenv/bin/pip install tensorflow-cpu h5py numpy opencv-python-headless

then, from the repo root:

    uv run python bench/check_mini_xception_port.py --tf-python /tmp/kerasenv/bin/python [--json out.json]

Inputs: the astronaut's face (skimage.data.astronaut(), x=177 y=56 w=95 h=120), other crops of skimage sample
images, and uniform-noise crops. Two comparisons:
  model:      the same preprocessed (N, 1, 64, 64) array through Keras and through the port (probabilities and
              pre-softmax logits);
  end-to-end: Keras fed by fer's own preprocessing steps run in the TF venv (its cv2) vs. port + `preprocess`.
It also shows how far off two classic porting mistakes would be (PyTorch BN eps, symmetric max-pool padding),
i.e. that the comparison is sensitive enough to catch them.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from classifier import mini_xception as mx

# Runs inside the TF venv. fer's steps (fer.py detect_emotions): BGR2GRAY, cv2.resize(64x64), /255, (x-0.5)*2.
_KERAS_SIDE = r"""
import sys, numpy as np, cv2, keras
data = np.load(sys.argv[2])
model = keras.models.load_model(sys.argv[1], compile=False)
logits_model = keras.Model(model.inputs, model.get_layer("global_average_pooling2d_1").output)
x = data["x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
faces = []
for i in range(int(data["n_raw"])):
    raw = data[f"raw_{i}"]
    gray = raw if raw.ndim == 2 else cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
    faces.append(cv2.resize(gray, (64, 64)))
fer_x = ((np.array(faces, dtype="float32") / 255.0) - 0.5) * 2.0
np.savez(sys.argv[3], probs=model.predict(x, verbose=0), logits=logits_model.predict(x, verbose=0),
         fer_x=fer_x, fer_probs=model.predict(fer_x[..., None], verbose=0),
         versions=np.array([__import__("tensorflow").__version__, keras.__version__, cv2.__version__]))
"""


def crops() -> tuple[list[str], list[np.ndarray]]:
    astro = np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1])  # RGB -> BGR
    names, out = [], []

    def add(name: str, img: np.ndarray) -> None:
        names.append(name)
        out.append(np.ascontiguousarray(img))

    add("astronaut_face", astro[56 : 56 + 120, 177 : 177 + 95])
    add("astronaut_face_loose", astro[30:200, 150:300])
    add("astronaut_background", astro[300:420, 0:120])
    add("camera_gray", skimage.data.camera()[40:200, 180:330])  # (H, W) grayscale input
    add("chelsea_cat", skimage.data.chelsea()[:, :, ::-1][50:250, 100:300])
    add("coffee", skimage.data.coffee()[:, :, ::-1][100:300, 200:400])
    rng = np.random.default_rng(0)
    for i in range(4):
        h, w = rng.integers(20, 200, size=2)
        add(f"noise_{i}", rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    return names, out


def torch_probs(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits = model(x)
    return logits.softmax(1).numpy(), logits.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tf-python", default="/tmp/kerasenv/bin/python", help="python of a venv with tensorflow")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()

    torch.set_num_threads(1)  # deterministic, and the machines this runs on are small
    names, raw = crops()
    x = mx.preprocess(raw)
    model = mx.load_fer_mini_xception()
    probs, logits = torch_probs(model, x)

    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = Path(tmp, "in.npz"), Path(tmp, "out.npz")
        np.savez(inp, x=x.numpy(), n_raw=len(raw), **{f"raw_{i}": r for i, r in enumerate(raw)})
        subprocess.run([args.tf_python, "-c", _KERAS_SIDE, str(mx.fer_weights_path()), str(inp), str(outp)], check=True)
        k = dict(np.load(outp))

    # Sensitivity: the same weights with PyTorch's default BN eps, and with symmetric max-pool padding.
    wrong_eps = mx.load_fer_mini_xception()
    for m in wrong_eps.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-5
    orig_pad = mx._tf_same_pad
    mx._tf_same_pad = lambda x, kernel, stride, value=0.0: F.pad(x, (1, 1, 1, 1), value=value)
    try:
        wrong_pad_probs, _ = torch_probs(model, x)
    finally:
        mx._tf_same_pad = orig_pad

    result = {
        "versions": {
            "tensorflow": str(k["versions"][0]),
            "keras": str(k["versions"][1]),
            "cv2_tf_venv": str(k["versions"][2]),
            "cv2_project": cv2.__version__,
            "torch": torch.__version__,
        },
        "n_inputs": len(names),
        "model_max_abs_diff_probs": float(np.abs(probs - k["probs"]).max()),
        "model_max_abs_diff_logits": float(np.abs(logits - k["logits"]).max()),
        "argmax_agree": bool((probs.argmax(1) == k["probs"].argmax(1)).all()),
        "end_to_end_max_abs_diff_input": float(np.abs(x.numpy()[:, 0] - k["fer_x"]).max()),
        "end_to_end_max_abs_diff_probs": float(np.abs(probs - k["fer_probs"]).max()),
        "if_bn_eps_1e-5_max_abs_diff_probs": float(np.abs(torch_probs(wrong_eps, x)[0] - k["probs"]).max()),
        "if_symmetric_pool_pad_max_abs_diff_probs": float(np.abs(wrong_pad_probs - k["probs"]).max()),
        "per_input": {
            n: {
                "top": mx.EMOTIONS[int(p.argmax())],
                "p_top": float(p.max()),
                "keras_p_top": float(q.max()),
                "max_abs_diff": float(np.abs(p - q).max()),
            }
            for n, p, q in zip(names, probs, k["probs"], strict=True)
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if not (result["argmax_agree"] and result["model_max_abs_diff_probs"] < 1e-4 and math.isfinite(logits.sum())):
        sys.exit("port disagrees with Keras")


if __name__ == "__main__":
    main()
