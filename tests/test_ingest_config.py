"""cameras.yaml: validation, ${ENV} substitution, clear errors with the field path, no secrets in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fervid.contracts import validate_camera_name
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
    def kind(url: str) -> str:
        return source_type(url).kind

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


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rtsp://", r"rtsp:// has no host: use rtsp://\[user:password@\]host\[:port\]/path"),
        ("rtsps://u:pw@:322/live", r"rtsps://\*\*\*@:322/live has no host"),
        ("rtsp://h:99999/x", r"rtsp://h:99999/x: the port must be a number from 0 to 65535"),
        ("rtsp://h:port/x", r"rtsp://h:port/x: the port must be a number"),
        ("v4l2://", r"v4l2:// names no device"),
        ("http://u:pw@h/x.mjpg", r"unknown kind of source 'http://\*\*\*@h/x.mjpg': use a video file, .* rtsp://"),
    ],
)
def test_a_url_that_can_never_work_is_rejected_at_load(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"cameras\.0\.url \(a\): Value error, {message}") as exc:
        parse_cameras(f"cameras: [{{name: a, url: '{url}'}}]", env={})
    assert "pw" not in str(exc.value)


def test_start_time_for_files_only_and_in_iso_8601() -> None:
    (cam,) = parse_cameras("cameras: [{name: a, url: x.mp4, start_time: '2024-05-01T09:30:00'}]")
    assert cam.start_time is not None and cam.start_time.isoformat() == "2024-05-01T09:30:00+00:00"  # no zone: UTC
    (cam,) = parse_cameras("cameras: [{name: a, url: x.mp4, start_time: 2024-05-01 11:30:00+02:00}]")  # YAML's own
    assert cam.start_time is not None and cam.start_time.timestamp() == 1714555800
    with pytest.raises(ConfigError, match=r"start_time applies to video files only"):
        parse_cameras("cameras: [{name: a, url: 'rtsp://h/x', start_time: '2024-05-01T09:30:00Z'}]")
    with pytest.raises(ConfigError, match=r"start time 'May 1st' is not ISO 8601: use e.g. 2024-05-01T09:30:00Z"):
        parse_cameras("cameras: [{name: a, url: x.mp4, start_time: May 1st}]")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"cameras:\n  - name: caf\xe9\n    url: x.mp4\n",
            r":2:14: not UTF-8 text \(byte 0xe9\); save the file as UTF-8",
        ),
        (
            b"cameras:\n  - {name: a, url: x.mp4\n  - {name: b}\n",
            r":3:5: not valid YAML: expected ',' or '}', but got '{' \(while parsing a flow mapping\)",
        ),
        (
            b"cameras:\n  - name: a\n   url: x.mp4\n",
            r":3:4: not valid YAML: expected <block end>, but found '<block mapping start>'",
        ),
        (b"cameras:\n  - name: \x07bell\n", r":2:11: not valid YAML: special characters are not allowed"),
    ],
    ids=["latin-1", "unclosed-flow", "bad-indent", "control-character"],
)
def test_unreadable_files_are_one_line_with_line_and_column(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "cameras.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as exc:
        load_cameras(path)
    assert str(exc.value).startswith(f"{path}:") and "\n" not in str(exc.value)


def test_long_names_and_values_are_cut_in_errors() -> None:
    name = "n" * 5000
    with pytest.raises(ConfigError) as exc:
        parse_cameras(f"cameras: [{{name: '{name} x', url: x.mp4, hwaccel: '{'h' * 5000}'}}]", env={})
    text = str(exc.value)
    # The name (5002 characters; 5004 quoted) and the decoder's name (5002 quoted), each cut to 100.
    assert len(text) < 1000 and "… (5002 characters)" in text and "… (5004 characters)" in text, text
    with pytest.raises(ValueError) as exc2:
        validate_camera_name("m" * 5000)
    assert len(str(exc2.value)) < 250 and "(5002 characters)" in str(exc2.value)
