"""`fervid demo` and `fervid timeline`: the walking skeleton's two commands."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fervid.cli import DataDir, DbUrl, RedisUrl, StartTime, Verbose, _setup_logging, app, console, out
from fervid.errors import FervidError


@app.command()
def demo(
    sources: Annotated[
        list[str] | None, typer.Argument(help="Video files, rtsp:// URLs or webcams. None: a generated sample clip.")
    ] = None,
    camera: Annotated[
        list[str] | None, typer.Option("--camera", help="Camera name per source (default: file stem).")
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Analysis rate in frames/s (default: every frame of a file).")
    ] = None,
    seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds of video.")] = None,
    start_time: StartTime = None,
    db: DbUrl = None,
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    detector: Annotated[str | None, typer.Option(help="Face detector backend.")] = None,
    model: Annotated[str | None, typer.Option(help="Emotion classifier model.")] = None,
    annotate: Annotated[
        Path | None,
        typer.Option(
            "--annotate", help="Also write the (first) video with faces, track ids, labels and probabilities drawn."
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Run the whole pipeline on video files (or cameras) in one process, then print a summary."""
    _setup_logging(verbose)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fervid.bus import redis_url_for
    from fervid.contracts import EMOTIONS
    from fervid.pipeline import run_pipeline
    from fervid.settings import load_settings
    from fervid.worker import StopFlag
    from ingest.runner import source_specs

    settings = load_settings(
        data_dir=data_dir, db_url=db, redis_url=redis, detector__backend=detector, classifier__model=model
    )
    if not sources:
        from fervid.sample import make_sample_clip

        clip = settings.data_dir / "sample.mp4"
        console.print(f"No source given: making a sample clip with two real faces at {clip}")
        make_sample_clip(clip, seconds=4.0)
        sources = [str(clip)]
    specs = source_specs(sources, camera, fps=fps, seconds=seconds, start_time=start_time)

    if annotate is not None:
        from fervid.cli.annotate import check_output
        from ingest.source import is_live

        check_output(annotate)
        if is_live(specs[0].url):
            raise FervidError(f"--annotate needs a video file as the first source, not {specs[0].url}")

    stop = StopFlag()
    stop.install_signal_handlers()
    with (
        redis_url_for(settings) as redis_url,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed} frames stored"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("analysing", total=None)
        summary = run_pipeline(
            specs, settings, redis_url, stop=stop, on_progress=lambda p: bar.update(task, completed=p.stored)
        )

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
    out.print(table)
    if annotate is not None:
        from fervid.cli.annotate import write_annotated

        if specs[0].camera not in summary.first_seq:
            raise FervidError(f"--annotate: no frame of {specs[0].url} was analysed")
        n = write_annotated(specs[0], summary.first_seq[specs[0].camera], settings, annotate)
        out.print(f"Annotated video ({n} frames): {annotate}")
    out.print(
        f"Timeline: fervid timeline {summary.cameras[0]} --db {settings.resolved_db_url}" if summary.cameras else ""
    )


@app.command()
def timeline(
    camera: Annotated[str, typer.Argument(help="Camera name.")],
    db: DbUrl = None,
    data_dir: DataDir = None,
    since: Annotated[str | None, typer.Option(help="Start: ISO-8601 or a duration ago (30m, 2h).")] = None,
    until: Annotated[str | None, typer.Option(help="End (exclusive): ISO-8601 or a duration ago.")] = None,
    bucket: Annotated[str, typer.Option(help="Bucket size: 1s, 10s, 1m, 1h, 1d, ...")] = "10s",
    format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    labels: Annotated[str, typer.Option(help="raw (per frame) or smoothed (per track) labels.")] = "raw",
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also write a stacked-area PNG of emotion shares here.")
    ] = None,
) -> None:
    """Emotion timeline of one camera: faces, label counts and mean probabilities per time bucket."""
    from fervid.contracts import EMOTIONS
    from fervid.settings import load_settings
    from storage.db import create_schema, make_engine
    from storage.timeline import parse_bucket_ms, parse_time
    from storage.timeline import timeline as query

    if format not in ("table", "json", "csv"):
        raise FervidError(f"unknown format {format!r}: use table, json or csv")
    settings = load_settings(data_dir=data_dir, db_url=db)
    if labels not in ("raw", "smoothed"):
        raise FervidError(f"unknown labels {labels!r}: use raw or smoothed")
    engine = make_engine(settings.resolved_db_url)
    create_schema(engine)
    buckets = query(
        engine,
        camera,
        parse_bucket_ms(bucket),
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
        labels=labels,  # type: ignore[arg-type]
    )
    if plot is not None:
        from storage.plot import plot_timeline

        plot_timeline(buckets, plot, f"{camera}: share of {labels} emotion labels per {bucket}")
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
    if not buckets:
        console.print(f"No faces for camera {camera!r} in that range.")
        return
    table = Table(title=f"{camera}: emotions per {bucket}")
    table.add_column("start")
    table.add_column("faces", justify="right")
    for e in EMOTIONS:
        table.add_column(e[:4], justify="right")
    table.add_column("dominant")
    for b in buckets:
        table.add_row(
            b["start"].replace("T", " ").removesuffix("Z"),
            str(b["faces"]),
            *[str(b["counts"][e]) for e in EMOTIONS],
            b["dominant"],
        )
    out.print(table)
