"""`fervid demo` and `fervid timeline`: the walking skeleton's two commands."""

from __future__ import annotations

import csv
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich import box
from rich.table import Table

from fervid.choices import TimelineLabels
from fervid.cli import command, console, out
from fervid.cli.options import (
    Cameras,
    CheckpointOption,
    DataDir,
    DbUrl,
    DetectorOption,
    Fps,
    RedisUrl,
    Seconds,
    ServedModel,
    StartTime,
)
from fervid.errors import FervidError

if TYPE_CHECKING:
    from fervid.pipeline import RunSummary
    from fervid.settings import Settings
    from ingest.runner import SourceSpec


@command()
def demo(
    sources: Annotated[
        list[str] | None, typer.Argument(help="Video files, rtsp:// URLs or webcams. None: a generated sample clip.")
    ] = None,
    camera: Cameras = None,
    fps: Fps = None,
    seconds: Seconds = None,
    start_time: StartTime = None,
    db: DbUrl = None,
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    detector: DetectorOption = None,
    model: ServedModel = None,
    checkpoint: CheckpointOption = None,
    annotate: Annotated[
        Path | None,
        typer.Option(
            "--annotate", help="Also write the (first) video with faces, track ids, labels and probabilities drawn."
        ),
    ] = None,
) -> None:
    """Run the whole pipeline on video files (or cameras) in one process, then print a summary."""
    from fervid.settings import load_settings
    from ingest.runner import expected_frames, source_specs

    settings = load_settings(
        data_dir=data_dir,
        db_url=db,
        redis_url=redis,
        detector__backend=detector,
        classifier__model=model,
        classifier__checkpoint=checkpoint,
    )
    specs = source_specs(sources or [_sample_clip(settings)], camera, fps=fps, seconds=seconds, start_time=start_time)
    expected = expected_frames(specs)  # also fails on a missing or unreadable file, before anything starts
    if annotate is not None:
        _check_annotate(annotate, specs[0])
    settings = _own_namespace(settings)
    summary = _run_with_progress(specs, settings, expected)
    out.print(_summary_table(summary))
    if annotate is not None:
        from fervid.cli.annotate import write_annotated

        if specs[0].camera not in summary.first_seq:
            raise FervidError(f"--annotate: no frame of {specs[0].url} was analysed")
        n = write_annotated(specs[0], summary.first_seq[specs[0].camera], settings, annotate)
        out.print(f"Annotated video ({n} frames): {annotate}")
    out.print(
        f"Timeline: fervid timeline {summary.cameras[0]} --db {settings.resolved_db_url}" if summary.cameras else ""
    )


def _sample_clip(settings: Settings) -> str:
    from fervid.sample import make_sample_clip

    clip = settings.data_dir / "sample.mp4"
    console.print(f"No source given: making a sample clip with two real faces at {clip}", soft_wrap=True)
    make_sample_clip(clip, seconds=4.0)
    return str(clip)


def _check_annotate(path: Path, first: SourceSpec) -> None:
    """Fail before the run when the annotated video could not be written or has no file to come from."""
    from fervid.cli.annotate import check_output
    from ingest.source import is_live

    check_output(path)
    if is_live(first.url):
        raise FervidError(f"--annotate needs a video file as the first source, not {first.url}")


def _own_namespace(settings: Settings) -> Settings:
    """On a Redis others may use, the demo keeps to its own namespace, so it consumes only the cameras it ingests
    (unless FERVID_NAMESPACE says which)."""
    url = settings.redis_url
    if not url or "FERVID_NAMESPACE" in os.environ:
        return settings
    from fervid.bus import private_namespace, redact_url

    settings = settings.model_copy(update={"namespace": private_namespace(settings.data_dir)})
    console.print(
        f"Redis {redact_url(url)}: namespace {settings.namespace} (this data dir's own; "
        "FERVID_NAMESPACE chooses another)",
        highlight=False,
        markup=False,
    )
    return settings


def _run_with_progress(specs: list[SourceSpec], settings: Settings, expected: int | None) -> RunSummary:
    """The pipeline on an embedded Redis unless one is configured, with a progress bar of the frames stored;
    Ctrl-C stops the sources and the run ends with what was stored."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fervid.bus import redis_url_for
    from fervid.pipeline import run_pipeline
    from fervid.worker import StopFlag

    stop = StopFlag()
    stop.install_signal_handlers()
    with (
        redis_url_for(settings) as redis_url,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("loading models", total=expected)
        return run_pipeline(
            specs,
            settings,
            redis_url,
            stop=stop,
            on_progress=lambda p: bar.update(task, completed=p.stored, description="analysing"),
        )


def _summary_table(summary: RunSummary) -> Table:
    from fervid.contracts import EMOTIONS

    table = Table(title=f"fervid demo: {', '.join(summary.cameras)}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("frames analysed", str(summary.frames_stored))
    table.add_row("faces (event rows)", str(summary.faces))
    for e in EMOTIONS:
        table.add_row(f"  {e}", str(summary.labels[e]))
    table.add_row("frames dropped (backlog)", str(summary.dropped))
    table.add_row("dead letters", str(summary.dead_letters))
    table.add_row("wall time", f"{summary.seconds:.1f} s")
    table.add_row("end-to-end", f"{summary.fps:.1f} frames/s")
    return table


TimelineFormat = Literal["table", "json", "csv"]


def _bucket(text: str | None) -> int | None:
    """Option parser: a bucket size is checked as the command line is read, before any database is opened."""
    from storage.timeline import parse_bucket_ms

    return None if text is None else _parsed(parse_bucket_ms, text)


def _time(text: str | None) -> datetime | None:
    from storage.timeline import parse_time

    return None if text is None else _parsed(parse_time, text)


def _time_option(help: str) -> Any:
    return typer.Option(parser=_time, metavar="TIME", help=help)


def _parsed(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except FervidError as exc:
        raise typer.BadParameter(str(exc)) from None


@command()
def timeline(
    camera: Annotated[str, typer.Argument(help="Camera name.")],
    db: DbUrl = None,
    data_dir: DataDir = None,
    since: Annotated[
        datetime | None, _time_option("Start: ISO-8601 or a duration ago (30m, 2h). Default: 24 h before --until.")
    ] = None,
    until: Annotated[
        datetime | None,
        _time_option("End (exclusive): ISO-8601 or a duration ago. Default: just after the camera's newest face."),
    ] = None,
    bucket: Annotated[
        int | None,
        typer.Option(
            parser=_bucket,
            metavar="DURATION",
            help="Bucket size, 1s to 1d (1s, 10s, 1m, 1h, ...). Default: the finest of 1s, 2s, 5s, ... 1d that "
            "gives at most 500 buckets.",
        ),
    ] = None,
    format: Annotated[TimelineFormat, typer.Option("--format", help="Output format.")] = "table",
    labels: Annotated[
        TimelineLabels, typer.Option(help="raw (each face's own label) or smoothed (its track's label).")
    ] = "raw",
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also write a stacked-area PNG of emotion shares here.")
    ] = None,
) -> None:
    """Emotion timeline of one camera: faces, label counts and mean probabilities per time bucket."""
    from fervid.cli.storage import existing_database
    from fervid.contracts import EMOTIONS
    from fervid.settings import load_settings
    from storage.timeline import choose_window, format_duration
    from storage.timeline import timeline as query

    engine = existing_database(load_settings(data_dir=data_dir, db_url=db).resolved_db_url)
    window = choose_window(engine, camera, since, until, bucket)
    first, end = window.data_range
    buckets = query(engine, camera, window.bucket_ms, since=first, until=end, labels=labels)
    per = format_duration(window.bucket_ms)
    if plot is not None:
        from storage.plot import plot_timeline

        plot_timeline(buckets, plot, f"{camera}: share of {labels} emotion labels per {per}")
        console.print(f"plot written to {plot}")
    if format == "json":
        out.print_json(json.dumps(buckets)) if sys.stdout.isatty() else print(json.dumps(buckets))
        return
    if format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["start", "faces", *[f"n_{e}" for e in EMOTIONS], *[f"mean_{e}" for e in EMOTIONS], "dominant"])
        for b in buckets:
            writer.writerow([b["start"], b["faces"], *b["counts"].values(), *b["mean"].values(), b["dominant"]])
        return
    span = f"{_when(window.since)} to {_when(window.until)} UTC"
    if not buckets:
        console.print(f"No faces for camera {camera!r} from {span}.")
        return
    table = timeline_table(buckets, f"{camera}: {labels} labels per {per}", window.bucket_ms)
    table.caption = f"from {span}"
    out.print(table)


def _when(t: datetime) -> str:
    return t.isoformat(sep=" ", timespec="seconds").removesuffix("+00:00")


def timeline_table(buckets: list[dict[str, Any]], title: str, bucket_ms: int) -> Table:
    """At most 80 columns: the start without its date when every bucket falls on one day (the date is in the
    title) and without seconds for whole-minute buckets; emotions by their first three letters."""
    from fervid.contracts import EMOTIONS

    one_day = len({b["start"][:10] for b in buckets}) == 1
    start = slice(11 if one_day else 5, 16 if bucket_ms % 60_000 == 0 else 19)
    if one_day:
        title += f" on {buckets[0]['start'][:10]}"
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left", caption_justify="left"
    )
    table.add_column("time" if one_day else "date time", no_wrap=True)
    table.add_column("faces", justify="right", no_wrap=True)
    for e in EMOTIONS:
        table.add_column(e[:3], justify="right", no_wrap=True)
    table.add_column("dominant", no_wrap=True)
    for b in buckets:
        table.add_row(
            b["start"].replace("T", " ")[start],
            str(b["faces"]),
            *[str(b["counts"][e]) for e in EMOTIONS],
            b["dominant"] or "-",
        )
    return table
