"""cameras.yaml: validation, ${ENV} substitution, clear errors with the field path, no secrets in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fervid.errors import ConfigError, SourceError
from ingest.cameras import load_cameras, parse_cameras
from ingest.source import open_container, redact_text, source_type, v4l2_device

GOOD = """
cameras:
  - name: door
    url: rtsp://${CAM_USER}:${CAM_PASS}@10.0.0.12:554/stream1
    fps: 2.5
    transport: udp
  - name: desk
    url: "0"
  - name: replay
    url: /data/lobby.mp4
    loop: true
    enabled: false
    max_size: 640
"""


def test_valid_config_with_env_substitution() -> None:
    cams = parse_cameras(GOOD, env={"CAM_USER": "admin", "CAM_PASS": "hunter2"})
    door, desk, replay = cams
    assert door.url == "rtsp://admin:hunter2@10.0.0.12:554/stream1"
    assert (door.fps, door.transport, door.loop, door.enabled) == (2.5, "udp", False, True)
    assert desk.fps == 5.0 and desk.transport == "tcp"
    assert replay.loop and not replay.enabled and replay.max_size == 640
    assert "hunter2" not in repr(door) and "hunter2" not in str(cams)


def test_missing_env_var_is_named() -> None:
    with pytest.raises(ConfigError, match=r"cameras\.0\.url: environment variable CAM_PASS is not set"):
        parse_cameras(GOOD, env={"CAM_USER": "admin"})


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "cameras:\n  - name: a\n    url: x.mp4\n    colour: red\n",
            r"cameras\.0\.colour \(a\): Extra inputs are not permitted",
        ),
        (
            "cameras:\n  - name: a\n    url: x.mp4\n    fps: 0\n",
            r"cameras\.0\.fps \(a\): Input should be greater than 0",
        ),
        (
            "cameras:\n  - name: a\n    url: rtsp://h/x\n    transport: quic\n",
            r"cameras\.0\.transport \(a\): Input should be 'tcp' or 'udp'",
        ),
        (
            "cameras:\n  - name: a\n    url: rtsp://u:pw@h/x\n    loop: true\n",
            r"cameras\.0 \(a\): Value error, loop applies to video files only",
        ),
        (
            "cameras:\n  - name: a b\n    url: x.mp4\n",
            r"cameras\.0\.name \(a b\): Value error, camera name 'a b' is invalid",
        ),
        (
            "cameras:\n  - {name: a, url: x.mp4}\n  - {name: a, url: y.mp4}\n",
            r"cameras: Value error, camera name 'a' is used twice",
        ),
        ("cameras: []\n", r"cameras: List should have at least 1 item"),
        ("- a\n", r"expected a mapping"),
        ("cameras: [\n", r"not valid YAML"),
        ("cams:\n  - {name: a, url: x.mp4}\n", r"cams: Extra inputs"),
    ],
)
def test_invalid_configs_say_where(yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cameras(yaml_text, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read camera config"):
        load_cameras(tmp_path / "nope.yaml")


def test_source_kinds_and_v4l2_paths() -> None:
    kind = lambda url: source_type(url).kind  # noqa: E731
    assert kind("rtsp://h/x") == kind("rtsps://h/x") == kind("RTSP://h/x") == "rtsp"
    assert kind("0") == kind("/dev/video2") == kind("v4l2:///dev/video1") == "v4l2"
    assert kind("clip.mp4") == kind("file:///data/clip.mp4") == kind("c:/videos/clip.mp4") == "file"
    assert [source_type(u).live for u in ("rtsp://h/x", "0", "clip.mp4")] == [True, True, False]
    assert v4l2_device("0") == "/dev/video0"
    assert v4l2_device("12") == "/dev/video12"
    assert v4l2_device("v4l2:///dev/video3") == "/dev/video3"
    assert v4l2_device("/dev/video1") == "/dev/video1"


def test_missing_webcam_says_how_to_pass_it() -> None:
    with pytest.raises(SourceError, match=r"webcam /dev/video57 does not exist .*--device /dev/video57"):
        open_container("57")


def test_webcam_path_that_is_not_a_device(tmp_path: Path) -> None:
    fake = tmp_path / "video0"
    fake.write_bytes(b"")
    with pytest.raises(SourceError, match="is not a video device"):
        open_container(f"v4l2://{fake}")


def test_redact_text_hides_every_credential() -> None:
    text = "Server returned 401: 'rtsp://admin:hunter2@10.0.0.1/a' then rtsps://tok@h/b"
    assert redact_text(text) == "Server returned 401: 'rtsp://***@10.0.0.1/a' then rtsps://***@h/b"
