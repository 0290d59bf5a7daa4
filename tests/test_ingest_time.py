"""Files keep their recording time: capture time = the container's creation_time tag + PTS, or --start-time +
PTS, else the start of the run; the same tagged clip stored in SQLite and in PostgreSQL gives the same timeline."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import pytest
import redis

from fervid.bus import Bus, iter_entries
from fervid.contracts import FrameMsg, Keys
from fervid.settings import Settings
from ingest.runner import SourceSpec, run_source

FERVID = [sys.executable, "-c", "from fervid.cli import main; main()"]
RECORDED = "2024-05-01T09:30:00Z"
RECORDED_TS = datetime(2024, 5, 1, 9, 30, tzinfo=UTC).timestamp()


def tagged_copy(src: Path, dst: Path, creation_time: str | None) -> Path:
    """`src` remuxed (same packets) with the container's creation_time tag set, as a camera's recorder writes it."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        if creation_time is not None:
            out.metadata["creation_time"] = creation_time
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


@pytest.fixture(scope="module")
def tagged_clip(sample_clip: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tagged_copy(sample_clip[0], tmp_path_factory.mktemp("tagged") / "door.mp4", "2024-05-01T09:30:00.000000Z")


def stamps(client: redis.Redis, camera: str) -> list[float]:
    return [FrameMsg.decode(f).frame.capture_ts for _, f in iter_entries(client, Keys().frames(camera))]


@pytest.mark.parametrize(
    ("tag", "start_time", "first", "said"),
    [
        ("2024-05-01T09:30:00.000000Z", None, RECORDED_TS, "from the file's creation_time tag"),
        ("2024-05-01T09:30:00.000000Z", "2023-01-02T03:04:05+01:00", 1672625045.0, "from the start time given"),
        (None, None, None, "from the start of this run (the file has no creation_time tag)"),
        ("1970-01-01T00:00:00.000000Z", None, None, "from the start of this run"),  # an unset camera clock
    ],
    ids=["tag", "start-time-overrides", "no-tag", "unset-clock"],
)
def test_capture_time_of_a_file(
    sample_clip: Any,
    tmp_path: Path,
    redis_client: redis.Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    tag: str | None,
    start_time: str | None,
    first: float | None,
    said: str,
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.camera")
    clip = tagged_copy(sample_clip[0], tmp_path / "clip.mp4", tag)
    before = time.time()
    counters = run_source(
        Bus(redis_client, "ingest"), SourceSpec("clip", str(clip), fps=10, start_time=start_time), settings
    )
    got = stamps(redis_client, "clip")
    assert counters.published == len(got) == 20  # 2 s at 10 fps
    if first is None:
        assert before <= got[0] <= time.time()
    else:
        assert got[0] == pytest.approx(first, abs=1e-3)
    assert [round(b - a, 3) for a, b in itertools.pairwise(got)] == [0.1] * 19  # + PTS
    assert f"clip: capture time = {datetime.fromtimestamp(got[0], UTC).isoformat()[:19]}" in caplog.text
    assert said in caplog.text


def test_start_time_is_for_files_and_help_says_what_is_used() -> None:
    from typer.testing import CliRunner

    from fervid.cli import app
    from fervid.errors import ConfigError
    from ingest.runner import source_specs

    with pytest.raises(ConfigError, match=r"--start-time applies to video files, not to rtsp://\*\*\*@cam/x"):
        source_specs(["a.mp4", "rtsp://u:pw@cam/x"], start_time=RECORDED)
    with pytest.raises(ConfigError, match="is not ISO 8601"):
        source_specs(["a.mp4"], start_time="yesterday")
    for command in ("demo", "ingest-files"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        text = " ".join(result.output.split())
        assert "--start-time" in text and "creation_time tag" in text and "the time of this run" in text, command


def timeline_json(db: str, camera: str) -> str:
    from typer.testing import CliRunner

    from fervid.cli import app

    window = ["--since", "2024-05-01T09:29:00Z", "--until", "2024-05-01T09:31:00Z", "--bucket", "1s"]
    result = CliRunner().invoke(app, ["timeline", camera, "--db", db, "--format", "json", *window])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_same_clip_in_sqlite_and_postgresql_gives_the_same_timeline_at_its_recording_time(
    tagged_clip: Path, tmp_path: Path, pg_url: str
) -> None:
    outputs = []
    for name, db in (("sqlite", f"sqlite:///{tmp_path / 'fervid.db'}"), ("postgresql", pg_url)):
        demo = subprocess.run(
            [*FERVID, "demo", str(tagged_clip), "--fps", "5", "--db", db, "--data-dir", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert demo.returncode == 0, demo.stderr[-3000:]
        outputs.append(timeline_json(db, "door"))
    sqlite, postgresql = outputs
    assert sqlite == postgresql
    buckets = json.loads(sqlite)
    assert buckets[0]["start"] == "2024-05-01T09:30:00Z"
    assert [b["start"] for b in buckets] == ["2024-05-01T09:30:00Z", "2024-05-01T09:30:01Z"]  # a 2 s clip
    assert sum(b["faces"] for b in buckets) >= 10  # 10 frames at 5 fps, two faces in each
