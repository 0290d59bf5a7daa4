"""The names a user picks from: detector backends, emotion models, devices, timeline labels.

They live in the spine, as Literals, so that settings and the CLI validate a name when they load or parse, and
``--help`` lists the valid ones, before any stage (or model) is imported. Each list is checked against the
registry it names: the detectors, devices and labels by tests/test_settings.py, the models by
tests/test_classifier_models.py.
"""

from __future__ import annotations

from typing import Literal, get_args

# detector.registry.DETECTORS
DetectorBackend = Literal["retinaface", "retinaface_resnet50", "mtcnn", "haar"]
# classifier.models.MODELS: every registered model can be trained, and served by name or from a checkpoint.
ClassifierModel = Literal["densenet161", "resnet152", "vgg16", "mobilenet_v2", "vgg1", "vgg2", "vgg3", "mini_xception"]
CLASSIFIER_MODELS: tuple[str, ...] = get_args(ClassifierModel)
# fervid.device.resolve_device: auto is CUDA when present, else the CPU.
Device = Literal["auto", "cpu", "cuda"]
# storage.timeline: count each face's own label, or its track's smoothed label.
TimelineLabels = Literal["raw", "smoothed"]
