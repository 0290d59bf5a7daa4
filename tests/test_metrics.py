"""The per-camera fps meter: frames in a sliding window over the window's span, per camera."""

from __future__ import annotations

import pytest

from fervid.metrics import CAMERA_FPS, FpsMeter


def test_fps_is_frames_in_the_window_over_its_span_and_forgets_old_frames() -> None:
    meter = FpsMeter("fpstest", window_s=10.0)
    for i in range(50):  # 5 fps for 10 s on camera a
        meter.add("a", now=100.0 + i * 0.2)
    assert meter.add("a", now=110.0) == pytest.approx(51 / 10.0)
    assert meter.add("b", frames=3, now=110.0) == pytest.approx(3 / 10.0)  # one sample: the whole window
    # 2 fps from here on: after a full window the old 5 fps frames are gone, and only them.
    rates = [meter.add("a", now=110.0 + i * 0.5) for i in range(1, 41)]
    assert rates[-1] == pytest.approx(21 / 10.0)
    assert CAMERA_FPS.labels("a", "fpstest")._value.get() == pytest.approx(rates[-1])
    assert meter.add("b", now=130.0) == pytest.approx(1 / 10.0)  # b's first frames left the window
