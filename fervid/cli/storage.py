"""Storage commands: `fervid store` (the storage service), `migrate`, `prune`, `api`, `grafana provision|export`."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fervid.cli import DataDir, DbUrl, RedisUrl, Verbose, _setup_logging, app, console, out
from fervid.errors import ConfigError


@app.command()
def store(
    redis: RedisUrl = None,
    db: DbUrl = None,
    data_dir: DataDir = None,
    claim_idle_ms: Annotated[
        int | None, typer.Option(help="Reclaim entries another consumer left unacked this long (ms).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Events per transaction.")] = None,
    max_messages: Annotated[
        int | None, typer.Option(help="Stop after this many messages (tests, one-off drains).")
    ] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds without a message.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve /metrics, /health and /ready on this port; 0 = off.")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """The storage service: EventsMsg from `fervid:events` → rows in SQL → ack. SIGTERM finishes the batch in hand."""
    _setup_logging(verbose)
    from fervid.cli.services import serve_stage
    from fervid.contracts import STORAGE_GROUP
    from fervid.settings import load_settings

    settings = load_settings(
        data_dir=data_dir, db_url=db, redis_url=redis, metrics_port=metrics_port,
        bus__claim_idle_ms=claim_idle_ms, storage__batch_size=batch_size,
    )  # fmt: skip

    def build(bus: Any, stop: Any) -> Any:
        from storage.db import create_schema, make_engine
        from storage.worker import StorageStage

        engine = make_engine(settings.resolved_db_url)
        create_schema(engine)
        return StorageStage(engine, settings, stop.is_set)

    # Storage is the one process exporting the bus's series (stream lag, dead letters, frames dropped).
    stats, stage = serve_stage(
        "storage",
        STORAGE_GROUP,
        settings,
        build,
        max_messages=max_messages,
        idle_timeout=idle_timeout,
        bus_metrics=True,
    )
    console.print(
        f"stored {stage.frames_written} frames, {stage.rows_written} new event rows; {stats.dead} dead-lettered"
    )


@app.command()
def migrate(db: DbUrl = None, data_dir: DataDir = None) -> None:
    """Create or upgrade the database schema to the newest migration (Alembic, no alembic.ini needed)."""
    from fervid.settings import load_settings
    from storage.db import make_engine
    from storage.migrate import upgrade

    engine = make_engine(load_settings(data_dir=data_dir, db_url=db).resolved_db_url)
    before, after = upgrade(engine)
    out.print(f"schema at {after}" + (f" (was {before})" if before != after else " (already up to date)"))


@app.command()
def prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Delete rows older than this: 30d, 12h, ...")],
    db: DbUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Retention: delete frames, events and finished tracks older than --older-than."""
    from fervid.settings import load_settings
    from storage.db import create_schema, make_engine
    from storage.db import prune as do_prune
    from storage.timeline import parse_duration_ms

    ms = parse_duration_ms(older_than)
    if ms < 3_600_000:
        raise ConfigError(f"--older-than {older_than} is under 1h: that deletes live data; use e.g. 30d")
    engine = make_engine(load_settings(data_dir=data_dir, db_url=db).resolved_db_url)
    create_schema(engine)
    deleted = do_prune(engine, ms)
    out.print(", ".join(f"{n} {table}" for table, n in deleted.items()) + " deleted")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def api(
    db: DbUrl = None,
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    verbose: Verbose = False,
) -> None:
    """HTTP API (OpenAPI docs at /docs). Auth: set FERVID_API_TOKEN to require a bearer token."""
    _setup_logging(verbose)
    import uvicorn

    from fervid.settings import load_settings
    from storage.api import create_app
    from storage.db import create_schema, make_engine

    settings = load_settings(data_dir=data_dir, db_url=db, redis_url=redis)
    token = os.environ.get("FERVID_API_TOKEN") or None
    if not token and not _is_loopback(host):
        console.print(
            f"[bold red]WARNING:[/bold red] binding {host} without FERVID_API_TOKEN: anyone who can reach this port reads every timeline",
            highlight=False,
        )
    engine = make_engine(settings.resolved_db_url)
    create_schema(engine)
    # uvicorn shuts down gracefully on SIGTERM, restores the handler it found and re-raises the signal: with this
    # handler that ends the process with status 0, as every other fervid worker does, not killed by the signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        create_app(engine, token=token, redis_url=settings.redis_url),
        host=host,
        port=port,
        log_level="info" if verbose else "warning",
    )


grafana_app = typer.Typer(help="Grafana dashboards as code.", no_args_is_help=True)
app.add_typer(grafana_app, name="grafana")


@grafana_app.command("export")
def grafana_export(directory: Annotated[Path, typer.Argument(help="Where to write the dashboard JSON files.")]) -> None:
    """Write the generated dashboard JSON (what file provisioning loads)."""
    from storage.grafana import export

    for path in export(directory):
        out.print(str(path))


@grafana_app.command("provision")
def grafana_provision(
    url: Annotated[str, typer.Option(help="Grafana URL, e.g. http://localhost:3000")],
    token: Annotated[
        str | None, typer.Option(help="Grafana service-account token (env GRAFANA_TOKEN).", envvar="GRAFANA_TOKEN")
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option("--db-url", help="PostgreSQL URL Grafana uses to reach the database (default: FERVID_DB_URL)."),
    ] = None,
    prometheus_url: Annotated[
        str | None,
        typer.Option(
            "--prometheus-url",
            help="Prometheus URL Grafana uses (e.g. http://prometheus:9090): adds the operations dashboard.",
        ),
    ] = None,
) -> None:
    """Create or update the datasources, the fervid folder and the dashboards (idempotent)."""
    from fervid.settings import load_settings
    from storage.grafana import provision

    if not token:
        raise ConfigError("give --token (a Grafana service-account token) or set GRAFANA_TOKEN")
    pg = db_url or load_settings().db_url
    if not pg:
        raise ConfigError("give --db-url postgresql://user:pw@host:5432/fervid (the database as Grafana reaches it)")
    for line in provision(url, token, pg, prometheus_url):
        out.print(line)
