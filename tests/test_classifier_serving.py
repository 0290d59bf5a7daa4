"""Serving a `fervid train` checkpoint through the real classifier worker on a real Redis."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
import torch
from synth import astronaut_bgr
from synthetic_faces import write_image_folder

from classifier import models
from classifier.checkpoint import load_checkpoint, make_preprocess, read_checkpoint
from classifier.models import MODELS, FerWeights, get_spec, servable_by_name
from classifier.serving import load_classifier
from classifier.train import TrainConfig, train
from classifier.worker import ClassifierStage, decode_crop
from fervid.bus import Bus
from fervid.contracts import EMOTIONS, Box, EventsMsg, Face, FacesMsg, FrameRef, Keys
from fervid.errors import ConfigError, NotFound
from fervid.settings import load_settings
from fervid.worker import run_stage

KEYS = Keys()  # the default namespace


@pytest.fixture(scope="module")
def best_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny vgg1 trained for one epoch on generated faces (seconds): any real best.pt will do."""
    root = tmp_path_factory.mktemp("serve")
    data = write_image_folder(root / "faces", n_train=10, n_test=2)
    config = TrainConfig(
        model="vgg1",
        data=str(data),
        out=str(root / "run"),
        epochs=1,
        batch_size=32,
        num_workers=0,
        progress=False,
        patience=0,
    )
    return train(config).best_checkpoint


def real_crops() -> list[np.ndarray]:
    """Face crops of different sizes and framings from a real photograph, BGR."""
    img = astronaut_bgr()
    return [
        img[56:176, 177:272],
        img[30:200, 150:300],
        img[40:190, 160:290],
        cv2.flip(img[56:176, 177:272], 1),
        img[70:170, 190:260],
    ]


def jpeg(crop: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", crop)
    assert ok
    return buf.tobytes()


def test_stage_serves_best_pt_like_a_direct_forward(best_pt: Path, redis_client: redis.Redis, tmp_path: Path) -> None:
    crops = [jpeg(c) for c in real_crops()]
    producer = Bus(redis_client, "detector")
    for seq in range(3):  # 3 frames, 5 faces each, the same crops: batched across frames
        faces = tuple(
            Face(index=i, box=Box(10, 10, 50, 50), score=0.9, crop=c, track_id=i) for i, c in enumerate(crops)
        )
        producer.publish(
            KEYS.faces,
            FacesMsg(frame=FrameRef("cam", seq, 100.0 + seq, 640, 480), detector="retinaface", faces=faces),
            downstream_group="classifier",
            backlog=100,
        )
    settings = load_settings(data_dir=tmp_path, classifier__checkpoint=best_pt, classifier__device="cpu")
    served = load_classifier(settings.classifier.model, settings.classifier.checkpoint, "cpu")
    assert served.model_id.startswith("vgg1:")
    stage = ClassifierStage(Bus(redis_client, "classifier"), served, settings)
    stats = run_stage(stage, stage.bus, max_messages=3, idle_timeout=2, block_ms=50)
    assert stats.messages == 3 and stats.dead == 0
    events = [EventsMsg.decode(f) for _, f in redis_client.xrange(KEYS.events)]
    assert [e.frame.seq for e in events] == [0, 1, 2]
    got = np.array([[em.probs for em in e.emotions] for e in events])  # (3, 5, 7)

    # The reference: the checkpoint loaded on its own, its own preprocessing, on the crops decoded as the worker
    # decodes them (luma only: the model reads gray).
    model, meta = load_checkpoint(best_pt)
    decoded = [cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_GRAYSCALE) for c in crops]
    with torch.inference_mode():
        want = torch.softmax(model(make_preprocess(meta)(decoded)), dim=1).numpy()
    for frame in got:
        np.testing.assert_allclose(frame, want, rtol=0, atol=1e-6)
    assert len({tuple(p.round(4)) for p in want}) > 1  # the crops really differ: a constant output would not pass
    assert all(e.model == served.model_id for e in events)


def test_decoding_luma_only_serves_what_the_color_decode_would() -> None:
    """The worker decodes crops straight to gray (half the JPEG work); the model's own BGR2GRAY of the color
    decode must give the same pixels but for JPEG's rounding (a few saturated pixels clamp in the color
    conversion), and the same labels."""
    crops = [jpeg(c) for c in real_crops()]
    ref = FrameRef("cam", 0, 1.0, 640, 480)
    gray = [
        decode_crop(
            FacesMsg(frame=ref, detector="retinaface", faces=(Face(index=0, box=Box(1, 1, 9, 9), score=0.9, crop=c),)),
            0,
        )
        for c in crops
    ]
    color = [cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR) for c in crops]
    for g, c in zip(gray, color, strict=True):
        assert g.shape == c.shape[:2]
        diff = np.abs(g.astype(int) - cv2.cvtColor(c, cv2.COLOR_BGR2GRAY).astype(int))
        assert diff.max() <= 4 and (diff > 1).mean() < 0.01 and diff.mean() < 0.05
    clf = load_classifier("mini_xception", device="cpu")
    p_gray, p_color = clf.predict(gray), clf.predict(color)
    np.testing.assert_allclose(p_gray, p_color, atol=0.01)
    assert (p_gray.argmax(1) == p_color.argmax(1)).all()


def test_compiled_serving_matches_eager_and_never_compiles_after_start(best_pt: Path) -> None:
    """torch.compile (inductor, real C++ codegen) with max_crops 4: the three static sizes 1, 2, 4 are compiled
    at construction; batches of any size (split and padded) then give the eager probabilities, no new graph."""
    from torch._dynamo.utils import counters  # dynamo's own count of the graphs it compiled

    eager = load_classifier(checkpoint=best_pt, device="cpu")
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = load_classifier(checkpoint=best_pt, device="cpu", compile=True, max_crops=4)
    assert compiled.padded_sizes == (1, 2, 4)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs - graphs_before == 3
    crops = [cv2.cvtColor(c, cv2.COLOR_BGR2GRAY) for c in real_crops()] * 2
    for n in (1, 3, 4, 7, 10):
        np.testing.assert_allclose(compiled.predict(crops[:n]), eager.predict(crops[:n]), rtol=0, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs
    split = load_classifier(checkpoint=best_pt, device="cpu", max_crops=3)  # eager passes of at most 3 crops
    np.testing.assert_allclose(split.predict(crops), eager.predict(crops), rtol=0, atol=1e-6)


def test_checkpoint_classes_in_another_order_are_mapped_by_name(best_pt: Path, tmp_path: Path) -> None:
    obj = read_checkpoint(best_pt)
    # Aliases as Kaggle mirrors spell them, in another order; the weights' rows stay as trained.
    permuted = ["neutral", "surprised", "sad", "happiness", "fearful", "disgust", "anger"]
    obj["classes"] = permuted
    path = tmp_path / "permuted.pt"
    torch.save(obj, path)
    crops = real_crops()
    raw = load_classifier(checkpoint=best_pt, device="cpu").predict(crops)  # columns = trained rows, in EMOTIONS order
    mapped = load_classifier(checkpoint=path, device="cpu").predict(crops)
    # Row r of the weights now means permuted[r]; the server must put it under that emotion.
    canonical = ["neutral", "surprise", "sad", "happy", "fear", "disgust", "angry"]
    for r, name in enumerate(canonical):
        np.testing.assert_allclose(mapped[:, EMOTIONS.index(name)], raw[:, r], atol=1e-7)
    assert not np.allclose(mapped, raw)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p, obj: None, NotFound, "does not exist"),
        (lambda p, obj: p.mkdir(), ConfigError, "is a directory"),
        (lambda p, obj: p.write_bytes(b"\x80\x02 not a checkpoint"), ConfigError, "cannot read .*not a PyTorch file$"),
        (lambda p, obj: p.write_bytes(b""), ConfigError, "cannot read .*not a PyTorch file$"),
        (lambda p, obj: torch.save({"weights": 1}, p), ConfigError, "not a fervid classifier checkpoint"),
        (lambda p, obj: torch.save(torch.nn.Linear(2, 7), p), ConfigError, "holds pickled objects.*could run code"),
        (
            lambda p, obj: torch.save({**obj, "classes": [*EMOTIONS[:6], "contempt"]}, p),
            ConfigError,
            "fervid serves exactly",
        ),
        (lambda p, obj: torch.save({**obj, "classes": list(EMOTIONS[:6])}, p), ConfigError, "fervid serves exactly"),
        (lambda p, obj: torch.save({**obj, "model_name": "vgg2"}, p), ConfigError, "do not fit model 'vgg2'"),
        (lambda p, obj: torch.save({**obj, "model_name": "vgg9"}, p), ConfigError, "unknown model 'vgg9'.*vgg1"),
        (lambda p, obj: torch.save({k: v for k, v in obj.items() if k != "epoch"}, p), ConfigError, "incomplete"),
    ],
    ids=[
        "missing",
        "directory",
        "corrupt",
        "empty",
        "not-fervid",
        "pickled-model",
        "other-class",
        "six-classes",
        "other-model",
        "unknown-model",
        "no-epoch",
    ],
)
def test_bad_checkpoints_fail_in_one_line(best_pt: Path, tmp_path: Path, make, error, message) -> None:
    path = tmp_path / "best.pt"
    make(path, read_checkpoint(best_pt))
    with pytest.raises(error, match=message) as info:
        load_classifier(checkpoint=path, device="cpu")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_settings_carry_compile_and_smoothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FERVID_CLASSIFIER__COMPILE", "true")
    monkeypatch.setenv("FERVID_CLASSIFIER__SMOOTHING__ALPHA", "0.5")
    s = load_settings(data_dir=tmp_path)
    assert s.classifier.compile is True and s.classifier.smoothing.alpha == 0.5
    assert json.loads(s.model_dump_json())["classifier"]["smoothing"]["min_observations"] == 3
    monkeypatch.setenv("FERVID_CLASSIFIER__SMOOTHING__AGREEMENT", "1.5")
    with pytest.raises(ConfigError, match="agreement"):
        load_settings(data_dir=tmp_path)


def test_a_corrupt_face_does_not_shift_the_next_frames_probabilities(redis_client: redis.Redis, settings) -> None:
    crops = real_crops()
    producer = Bus(redis_client, "detector")

    def ref(seq: int) -> FrameRef:
        return FrameRef("cam", seq, 1.0 + seq, 640, 480)

    bad = FacesMsg(
        frame=ref(0),
        detector="retinaface",
        faces=(
            Face(index=0, box=Box(1, 1, 9, 9), score=0.9, crop=jpeg(crops[0])),
            Face(index=1, box=Box(20, 1, 9, 9), score=0.9, crop=b"junk"),
        ),
    )
    good = FacesMsg(
        frame=ref(1),
        detector="retinaface",
        faces=tuple(
            Face(index=i, box=Box(1 + 20 * i, 1, 9, 9), score=0.9, crop=jpeg(c)) for i, c in enumerate(crops[1:4])
        ),
    )
    for m in (bad, good):  # one batch: the dead frame's good face must not stay among the crops
        producer.publish(KEYS.faces, m, downstream_group="classifier", backlog=100)
    clf = load_classifier("mini_xception", device="cpu")
    stage = ClassifierStage(Bus(redis_client, "classifier"), clf, settings)
    stats = run_stage(stage, stage.bus, max_messages=2, idle_timeout=2, block_ms=50)
    assert stats.dead == 1
    ((_, fields),) = redis_client.xrange(KEYS.events)
    got = np.array([e.probs for e in EventsMsg.decode(fields).emotions])
    decoded = [cv2.imdecode(np.frombuffer(jpeg(c), np.uint8), cv2.IMREAD_GRAYSCALE) for c in crops[1:4]]
    np.testing.assert_allclose(got, clf.predict(decoded), atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_every_registered_model_is_served_by_name_or_refused_at_start(name: str) -> None:
    """By name, a model is served with the weights its registry entry ships; one without any fails at start, before
    building anything, naming the models servable by name and the way to serve this one."""
    if name not in servable_by_name():
        with pytest.raises(ConfigError, match=f"'{name}' ships no weights.*served by name: mini_xception") as info:
            load_classifier(name, device="cpu")
        assert f"fervid train --model {name}" in str(info.value) and "--checkpoint" in str(info.value)
        return
    clf = load_classifier(name, device="cpu")
    probs = clf.predict(real_crops())
    assert probs.shape == (5, len(EMOTIONS)) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert clf.model_id == get_spec(name).fer_weights.model_id


def test_by_name_and_by_checkpoint_are_one_path(best_pt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give vgg1's registry entry the weights of a trained run: served by name it answers exactly what its best.pt
    answers, preprocessing included (weights without a preprocessing of their own get training's eval transform)."""
    trained, _ = load_checkpoint(best_pt)
    spec = get_spec("vgg1")
    weights = FerWeights(load=lambda: trained, model_id="vgg1-test")
    monkeypatch.setitem(models._REGISTRY, "vgg1", dataclasses.replace(spec, fer_weights=weights))
    by_name = load_classifier("vgg1", device="cpu")
    assert by_name.model_id == "vgg1-test"
    crops = real_crops()
    np.testing.assert_allclose(
        by_name.predict(crops), load_classifier(checkpoint=best_pt, device="cpu").predict(crops), rtol=0, atol=1e-6
    )
    with pytest.raises(ConfigError, match="unknown model 'vgg9'; known models: densenet161"):
        load_classifier("vgg9", device="cpu")
