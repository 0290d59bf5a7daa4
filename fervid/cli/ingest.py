"""`fervid ingest` (many cameras from cameras.yaml, one process) and `fervid cameras` (their state)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fervid.cli import command, console, out
from fervid.cli.options import DataDir, MetricsPort, RedisUrl
from fervid.logs import format_config

if TYPE_CHECKING:
    import redis

    from fervid.contracts import Keys


@command(service=True)
def ingest(
    config: Annotated[Path, typer.Option("--config", "-c", help="cameras.yaml: the cameras to run.")],
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    metrics_port: MetricsPort = None,
) -> None:
    """Run every enabled camera of a cameras.yaml, one thread each, reconnecting with backoff. SIGHUP reloads it."""
    from fervid.bus import connect_waiting, redact_url, redis_url_for
    from fervid.metrics import serve_health
    from fervid.settings import load_settings
    from fervid.signals import exit_now_on_signal
    from fervid.worker import StopFlag
    from ingest.cameras import load_cameras
    from ingest.service import serve

    settings = load_settings(data_dir=data_dir, redis_url=redis, metrics_port=metrics_port)
    cameras = load_cameras(config)  # fail fast, before connecting to anything
    startup = {**settings.describe("ingest"), "config": str(config), "cameras": len(cameras)}
    logging.getLogger(__name__).info("ingest: starting with %s", format_config(startup), extra={"config": startup})

    def announce(url: str) -> None:
        console.print(f"No --redis given: embedded Redis at {url}")

    exit_now_on_signal()  # while it waits for Redis, SIGTERM exits at once (the embedded one stops with it)
    with redis_url_for(settings, announce) as url:
        client = connect_waiting(url, "ingest")  # a Redis that is still starting (or away) is waited for
        enabled = [c.name for c in cameras if c.enabled]
        console.print(
            f"ingest: {len(enabled)} camera(s) from {config} → {redact_url(url)}; SIGHUP reloads, Ctrl-C stops"
        )
        stop = StopFlag()
        stop.install_signal_handlers()
        health = serve_health("ingest", settings.metrics_port, client, settings.keys)
        try:
            serve(client, settings, config, should_stop=stop.is_set)
        finally:
            health.close()


@command()
def cameras(redis: RedisUrl = None, data_dir: DataDir = None) -> None:
    """State of every camera an ingest process has published: state, fps, frames, drops, reconnects, last error, age.

    A camera whose ingest process is gone (its state was not refreshed for 10 s) shows as unknown. Without
    --redis: the embedded Redis of the `fervid ingest`, `up` or `demo` running on the same --data-dir.
    """
    from fervid.bus import connect, running_redis_url
    from fervid.settings import load_settings

    settings = load_settings(data_dir=data_dir, redis_url=redis)
    rows = camera_rows(connect(running_redis_url(settings)), settings.keys)
    if not rows:
        console.print("No cameras have been published yet.")
        return
    table = Table(title="cameras")
    numbers = ("fps", "frames", "drops", "offline", "reconnects", "age")
    for col in ("camera", "state", *numbers[:-1], "last error", "age"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in rows:
        table.add_row(*[r[k] for k in ("camera", "state", *numbers[:-1], "last_error", "age")])
    out.print(table)


def camera_rows(client: redis.Redis, keys: Keys, now: float | None = None) -> list[dict[str, str]]:
    """One row per known camera. A camera whose state has expired, or was not refreshed within the state's TTL,
    is ``unknown``: the ingest process that ran it is gone (or hung). Its counters are then the last ones the
    bus recorded. ``offline``: frames dropped while Redis was unreachable."""
    from fervid.bus import as_text
    from ingest.camera import STATE_TTL_S

    now = time.time() if now is None else now
    rows = []
    for name in sorted(as_text(c) for c in client.smembers(keys.cameras)):
        h = {as_text(k): as_text(v) for k, v in client.hgetall(keys.camera(name, "state")).items()}
        stats = {as_text(k): as_text(v) for k, v in client.hgetall(keys.camera(name, "stats")).items()}
        updated = float(h.get("updated", 0) or 0)
        age = now - updated if updated else None
        owned = age is not None and age <= STATE_TTL_S
        rows.append(
            {
                "camera": name,
                "state": h.get("state", "unknown") if owned else "unknown",
                "fps": f"{float(h.get('fps', 0) or 0):.1f}" if owned else "-",
                "frames": h.get("frames", stats.get("published", "0")),
                "drops": h.get("drops", stats.get("dropped", "0")),
                "offline": h.get("offline_drops", stats.get("offline_drops", "0")),
                "reconnects": h.get("reconnects", "0"),
                "last_error": h.get("last_error", ""),
                "age": "-" if age is None else f"{age:.0f}s",
            }
        )
    return rows
