"""Every command answers like a finished tool: a mistake on the command line (or in a FERVID_* variable) is a
short message and a non-zero exit, never a traceback, and leaves nothing behind; `--version`; a log level on
every command; names listed in --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main

from fervid.cli import app

FERVID = str(Path(sys.executable).with_name("fervid"))  # the console script the package installs


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FERVID_")}
    return subprocess.run(
        [FERVID, *args], cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=120
    )


def tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


# (environment, arguments, a fragment of the message). Every command has at least one row.
MISTAKES: list[tuple[dict[str, str], list[str], str]] = [
    ({}, ["nosuch"], "No such command"),
    ({}, ["--nosuch"], "No such option"),
    ({}, ["demo", "clip.mp4", "--no-such-flag"], "No such option: --no-such-flag"),
    ({}, ["demo", "--fps", "-3"], "-3 is not above 0"),
    ({}, ["demo", "--fps", "fast"], "Invalid value for '--fps'"),
    ({}, ["demo", "--seconds", "0"], "0 is not above 0"),
    ({}, ["demo", "--detector", "yolo"], "'yolo' is not one of 'retinaface', 'retinaface_resnet50', 'mtcnn', 'haar'"),
    ({}, ["demo", "missing.mp4"], "video file missing.mp4 does not exist"),
    ({}, ["timeline"], "Missing argument"),
    ({}, ["timeline", "cam", "--format", "xml"], "'xml' is not one of 'table', 'json', 'csv'"),
    ({}, ["timeline", "cam", "--labels", "fancy"], "'fancy' is not one of 'raw', 'smoothed'"),
    ({}, ["timeline", "cam", "--bucket", "5parsecs"], "invalid duration '5parsecs'"),
    ({}, ["timeline", "cam", "--since", "yesterday"], "invalid time 'yesterday'"),
    ({}, ["timeline", "cam", "--db", "sqlite:///typo.db"], "no such database typo.db"),
    ({}, ["timeline", "cam"], "no such database fervid-data/fervid.db"),
    ({}, ["detect", "--detector", "yolo"], "'yolo' is not one of"),
    ({}, ["detect", "--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    ({}, ["detect", "--batch-size", "0"], "greater than or equal to 1"),
    ({}, ["detect", "--metrics-port", "70000"], "less than or equal to 65535"),
    ({}, ["classify", "--device", "gpu"], "'gpu' is not one of"),
    ({}, ["classify", "--batch-size", "many"], "Invalid value for '--batch-size'"),
    ({}, ["classify", "--model", "vgg19"], "'vgg19' is not one of 'densenet161', 'resnet152', 'vgg16',"),
    ({}, ["demo", "--model", "fer"], "'fer' is not one of 'densenet161', 'resnet152', 'vgg16',"),
    ({}, ["store", "--max-messages", "0"], "greater than or equal to 1"),
    ({}, ["ingest"], "Missing option '--config'"),
    ({}, ["ingest", "--config", "missing.yaml"], "missing.yaml"),
    ({}, ["ingest-files"], "Missing argument"),
    ({}, ["ingest-files", "clip.mp4", "--fps", "0"], "0 is not above 0"),
    ({}, ["ingest-files", "clip.mp4", "--redis", "http://127.0.0.1:1/0"], "(redis://, rediss://, unix://)"),
    ({}, ["cameras", "--redis"], "requires an argument"),
    ({}, ["cameras"], "no embedded Redis is running under fervid-data"),  # and none is started
    ({}, ["api", "--port", "99999"], "less than or equal to 65535"),
    ({}, ["api", "--port", "http"], "Invalid value for '--port'"),
    ({}, ["api", "--db", "sqlite:///typo.db"], "no such database typo.db"),
    ({}, ["api"], "no such database fervid-data/fervid.db"),
    ({}, ["migrate", "--db", "mysql://x"], "unsupported database URL"),
    ({}, ["prune"], "Missing option '--older-than'"),
    ({}, ["prune", "--older-than", "5m"], "under 1h"),
    ({}, ["grafana", "nosuch"], "No such command"),
    ({}, ["grafana", "provision"], "Missing option '--url'"),
    ({}, ["grafana", "provision", "--url", "http://g:3000", "--db-url", "x"], "No such option: --db-url"),
    ({}, ["up"], "nothing to ingest"),
    ({}, ["up", "--detectors", "0"], "greater than or equal to 1"),
    ({}, ["stages", "detector", "nosuch"], "unknown stage 'nosuch'"),
    ({}, ["train", "--log-level", "loud"], "'loud' is not one of 'debug', 'info', 'warning', 'error'"),
    ({}, ["evaluate"], "Missing argument"),
    ({}, ["compare", "--models", "vgg1"], "dataset path fervid-data/fer2013 does not exist"),
    ({}, ["export"], "Missing argument"),
    ({"FERVID_LOG_LEVEL": "loud"}, ["demo"], "FERVID_LOG_LEVEL"),
    ({"FERVID_LOG_FORMAT": "xml"}, ["timeline", "cam"], "FERVID_LOG_FORMAT='xml' is not a log format"),
    ({"FERVID_DETECTR__BACKEND": "haar"}, ["demo"], "did you mean FERVID_DETECTOR__BACKEND?"),
    ({"FERVID_REDIS": "redis://x"}, ["detect"], "did you mean FERVID_REDIS_URL?"),
    ({"FERVID_DETECTOR__BACKEND": "yolo"}, ["detect"], "FERVID_DETECTOR__BACKEND"),
    ({"FERVID_DETECTOR__BATCH_SIZE": "abc"}, ["detect"], "detector.batch_size (FERVID_DETECTOR__BATCH_SIZE)"),
]


@pytest.mark.parametrize(("env", "args", "message"), MISTAKES, ids=[" ".join(m[1]) + str(m[0]) for m in MISTAKES])
def test_a_mistake_is_a_short_message_and_a_nonzero_exit(
    tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"not even a video")
    before = tree(tmp_path)
    result = run(args, tmp_path, env)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 8, result.stderr
    assert message in " ".join(" ".join(lines).replace("│", " ").split()), result.stderr
    assert tree(tmp_path) == before, "a bad command left files behind"


def test_there_are_mistakes_for_every_command() -> None:
    names = set(typer.main.get_group(app).commands)
    assert names - {args[0] for _, args, _ in MISTAKES} == set()
    assert len(MISTAKES) >= 20


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run(["--version"], tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"fervid {version('fervid')}"


def _commands() -> list[tuple[str, click.Command]]:
    """Every command, sub-commands of groups (`grafana provision`) included."""
    found = []
    for name, command in typer.main.get_group(app).commands.items():
        subs = getattr(command, "commands", None)
        found += [(f"{name} {sub}", c) for sub, c in subs.items()] if subs else [(name, command)]
    return found


@pytest.mark.parametrize(("name", "command"), _commands(), ids=[n for n, _ in _commands()])
def test_every_command_takes_a_log_level(name: str, command: click.Command) -> None:
    options = {opt for p in command.params for opt in p.opts}
    assert {"--log-level", "-v"} <= options, name
    assert "--verbose" not in options, name


def test_help_lists_the_choices(tmp_path: Path) -> None:
    wide = {"COLUMNS": "200"}
    detect = run(["detect", "--help"], tmp_path, wide).stdout
    assert "retinaface|retinaface_resnet50|mtcnn|haar" in detect and "auto|cpu|cuda" in detect
    timeline = run(["timeline", "--help"], tmp_path, wide).stdout
    assert "table|json|csv" in timeline and "raw|smoothed" in timeline and "debug|info|warning|error" in timeline
    models = "densenet161|resnet152|vgg16|mobilenet_v2|vgg1|vgg2|vgg3|mini_xception"
    for command in ("classify", "demo"):
        assert models in run([command, "--help"], tmp_path, wide).stdout, command


def test_json_logs_of_a_service_start_with_its_configuration(redis_url: str, tmp_path: Path) -> None:
    """FERVID_LOG_FORMAT=json: every stderr line is one JSON object, the first says what the detector runs with."""
    import json
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("FERVID_")}
    env |= {"FERVID_LOG_FORMAT": "json", "FERVID_DETECTOR__BATCH_SIZE": "4"}
    proc = subprocess.Popen(
        [FERVID, "detect", "--redis", redis_url, "--detector", "haar", "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        while not any("ready" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"detect exited before it was ready: {lines}"
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(line) for line in lines if line.strip()]
    start = next(r for r in records if "starting" in r["message"])
    assert start["level"] == "info" and start["logger"] == "fervid.stages"
    assert start["config"]["detector"]["backend"] == "haar" and start["config"]["detector"]["batch_size"] == 4
    assert start["config"]["detector"]["device"] == "cpu" and start["config"]["namespace"] == "fervid"
    assert "detector.backend=haar" in start["message"]
    assert records.index(start) < next(i for i, r in enumerate(records) if "ready" in r["message"])


def until_it_waits_for_redis(args: list[str], cwd: Path) -> str:
    """Run a service on a Redis that is not there until it logs that it waits for it, then SIGTERM it (it has
    nothing in flight: exit 0). Its stderr."""
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("FERVID_")}
    proc = subprocess.Popen([FERVID, *args], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        while not any("unreachable" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"{args[0]} exited instead of waiting for Redis: {lines}"
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=30) == 0, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "".join(lines)


def test_log_level_and_verbose(tmp_path: Path) -> None:
    """Services log their start at info by default; --log-level warning silences that (not the warning that
    Redis is away, which they wait for), -v on a command that defaults to warning turns it on."""
    (tmp_path / "clip.mp4").write_bytes(b"not even a video")
    quiet = until_it_waits_for_redis(
        ["ingest-files", "clip.mp4", "--redis", "redis://127.0.0.1:1/0", "--log-level", "warning"], tmp_path
    )
    loud = until_it_waits_for_redis(["ingest-files", "clip.mp4", "--redis", "redis://127.0.0.1:1/0"], tmp_path)
    assert "starting with" not in quiet and "ingest-files: Redis at redis://127.0.0.1:1/0 unreachable" in quiet
    assert "ingest-files: starting with" in loud and "ingest.max_size=1280" in loud
    assert "redis=redis://127.0.0.1:1/0" in loud
    db = f"sqlite:///{tmp_path / 'm.db'}"
    assert "Running upgrade" not in run(["migrate", "--db", db], tmp_path).stderr
    assert "Running upgrade" in run(["migrate", "--db", db.replace("m.db", "n.db"), "-v"], tmp_path).stderr


def test_the_demo_bar_expects_the_frames_the_files_will_give(sample_clip: tuple[Path, object]) -> None:
    """The bar's total: duration x analysis rate (at most the file's own), per file; unknown for a live source."""
    from ingest.runner import expected_frames, source_specs

    clip = str(sample_clip[0])  # 2 s at 30 fps
    assert expected_frames(source_specs([clip])) == 60
    assert expected_frames(source_specs([clip], fps=10)) == 20
    assert expected_frames(source_specs([clip], fps=100, seconds=1)) == 30
    assert expected_frames(source_specs([clip, clip], ["a", "b"], fps=5)) == 20
    assert expected_frames(source_specs([clip, "rtsp://127.0.0.1:1/x"], ["a", "b"])) is None


@pytest.mark.parametrize("level", ["info", "warning"])
def test_the_api_access_log_follows_the_level(tmp_path: Path, level: str) -> None:
    import json
    import signal
    import socket
    import time
    import urllib.request

    db = f"sqlite:///{tmp_path / 'api.db'}"
    assert run(["migrate", "--db", db], tmp_path).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERVID_")} | {"FERVID_LOG_FORMAT": "json"}
    args = [FERVID, "api", "--db", db, "--port", str(port), "--log-level", level]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the api did not start"
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    starts = [r for r in records if r["message"].startswith("api: starting with")]
    if level == "info":
        assert access and "GET /health" in access[0]["message"] and starts[0]["config"]["port"] == port
    else:
        assert access == [] and starts == []
