"""Storage commands: `fervid store` (the storage service), `migrate`, `prune`, `api`, `grafana provision|export`."""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from fervid.cli import app, command, out
from fervid.cli.options import DataDir, DbUrl, MetricsPort, RedisUrl
from fervid.errors import ConfigError, NotFound
from fervid.logs import format_config

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from storage.worker import StorageStage

log = logging.getLogger(__name__)


def existing_database(url: str) -> Engine:
    """An engine on a database that already holds fervid's tables (upgraded to the newest migration), for the
    commands that read or prune: a mistyped path says so instead of leaving an empty database behind."""
    from sqlalchemy import inspect

    from fervid.bus import redact_url
    from storage.db import create_schema, make_engine

    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:") and not path.is_file():
            raise NotFound(f"no such database {path}: give --db (or FERVID_DB_URL), or fill it with `fervid demo`")
    engine = make_engine(url)
    if not inspect(engine).has_table("events"):
        raise NotFound(f"{redact_url(url)} has no fervid tables: a wrong --db? (`fervid migrate` creates them)")
    create_schema(engine)
    return engine


@command(service=True)
def store(
    redis: RedisUrl = None,
    db: DbUrl = None,
    data_dir: DataDir = None,
    claim_idle_ms: Annotated[
        int | None, typer.Option(min=100, help="Reclaim entries another consumer left unacked this long (ms).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Events per transaction.")] = None,
    max_messages: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many messages (tests, one-off drains).")
    ] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds without a message.")] = None,
    metrics_port: MetricsPort = None,
) -> None:
    """The storage service: EventsMsg from `fervid:events` → rows in SQL → ack. SIGTERM finishes the batch in hand."""
    from fervid.cli.services import serve_stage

    stats, stage = serve_stage(
        "storage",
        max_messages=max_messages,
        idle_timeout=idle_timeout,
        data_dir=data_dir,
        db_url=db,
        redis_url=redis,
        metrics_port=metrics_port,
        bus__claim_idle_ms=claim_idle_ms,
        storage__batch_size=batch_size,
    )
    written = cast("StorageStage", stage)
    log.info(
        "store: stored %d frames, %d new event rows; %d dead-lettered",
        written.frames_written,
        written.rows_written,
        stats.dead,
    )


@command()
def migrate(db: DbUrl = None, data_dir: DataDir = None) -> None:
    """Create or upgrade the database schema to the newest migration (Alembic, no alembic.ini needed)."""
    from fervid.settings import load_settings
    from storage.db import make_engine
    from storage.migrate import upgrade

    engine = make_engine(load_settings(data_dir=data_dir, db_url=db).resolved_db_url)
    before, after = upgrade(engine)
    out.print(f"schema at {after}" + (f" (was {before})" if before != after else " (already up to date)"))


@command()
def prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Delete rows older than this: 30d, 12h, ...")],
    db: DbUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Retention: delete frames, events and finished tracks older than --older-than."""
    from fervid.settings import load_settings
    from storage.db import prune as do_prune
    from storage.timeline import parse_duration_ms

    ms = parse_duration_ms(older_than)
    if ms < 3_600_000:
        raise ConfigError(f"--older-than {older_than} is under 1h: that deletes live data; use e.g. 30d")
    engine = existing_database(load_settings(data_dir=data_dir, db_url=db).resolved_db_url)
    deleted = do_prune(engine, ms)
    out.print(", ".join(f"{n} {table}" for table, n in deleted.items()) + " deleted")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@command(service=True)
def api(
    db: DbUrl = None,
    redis: RedisUrl = None,
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port (compose and Kubernetes use 8000).")] = 8000,
) -> None:
    """HTTP API (OpenAPI docs at /docs) on an existing database. Auth: set FERVID_API_TOKEN to require a bearer
    token."""
    import uvicorn

    from fervid.settings import load_settings
    from storage.api import create_app

    settings = load_settings(data_dir=data_dir, db_url=db, redis_url=redis)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    config = {**settings.describe(db=True), "host": host, "port": port, "auth": "token" if token else "none"}
    log.info("api: starting with %s", format_config(config), extra={"config": config})
    if not token and not _is_loopback(host):
        log.warning("binding %s without FERVID_API_TOKEN: anyone who can reach this port reads every timeline", host)
    # A server that only reads: a mistyped path says so (compose and Kubernetes run `fervid migrate` first).
    engine = existing_database(settings.resolved_db_url)
    # uvicorn shuts down gracefully on SIGTERM, restores the handler it found and re-raises the signal: with this
    # handler that ends the process with status 0, as every other fervid worker does, not killed by the signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # log_config=None: uvicorn's loggers (its access log is at info) go through ours, at our level and format.
    uvicorn.run(
        create_app(engine, token=token, redis_url=settings.redis_url, keys=settings.keys),
        host=host,
        port=port,
        log_config=None,
        log_level=logging.getLogger().getEffectiveLevel(),
    )


grafana_app = typer.Typer(help="Grafana dashboards as code.", no_args_is_help=True)
app.add_typer(grafana_app, name="grafana")


@command("export", on=grafana_app)
def grafana_export(
    directory: Annotated[Path, typer.Argument(help="Where to write the dashboard JSON files.")],
) -> None:
    """Write the generated dashboard JSON (what file provisioning loads)."""
    from storage.grafana import export

    for path in export(directory):
        out.print(str(path))


@command("provision", on=grafana_app)
def grafana_provision(
    url: Annotated[str, typer.Option(help="Grafana URL, e.g. http://localhost:3000")],
    token: Annotated[
        str | None, typer.Option(help="Grafana service-account token (env GRAFANA_TOKEN).", envvar="GRAFANA_TOKEN")
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="PostgreSQL URL Grafana uses to reach the database (default: FERVID_DB_URL)."),
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
    pg = db or load_settings().db_url
    if not pg:
        raise ConfigError("give --db postgresql://user:pw@host:5432/fervid (the database as Grafana reaches it)")
    for line in provision(url, token, pg, prometheus_url):
        out.print(line)
