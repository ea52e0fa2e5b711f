"""PostgreSQL connections and the ordered migrations in sql/.

Each migration runs in its own transaction and is recorded with a checksum in
schema_migrations; re-running is a no-op, and an applied file that was edited afterwards stops
the migration (later changes go in a new file).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions

from patternalarm import secrets
from patternalarm.settings import PROJECT_ROOT, Settings, mask_url

SQL_DIR = PROJECT_ROOT / "sql"
_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Any fixed 64-bit number, so concurrent migrators on one database serialise.
_MIGRATION_LOCK = 0x70A7_7E2A_1A2B


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def url(settings: Settings, database: str, driver: str = "postgresql") -> str:
    """URL of `database` on the configured server (embedded or external)."""
    if settings.embedded_postgres:
        password = secrets.load(settings)["postgres_password"]
        return (f"{driver}://postgres:{password}@{settings.bind_host}:"
                f"{settings.postgres_port}/{database}")
    parts = urlsplit(settings.postgres_url.get_secret_value())
    return urlunsplit(parts._replace(scheme=driver, path="/" + database))


def connect(settings: Settings, database: str | None = None,
            timeout_s: int = 5) -> psycopg2.extensions.connection:
    target = url(settings, database or settings.app_db)
    try:
        return psycopg2.connect(target, connect_timeout=timeout_s)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
        raise ConnectionError(f"PostgreSQL at {mask_url(target)}: {reason}") from None


# Status and the dashboard's headline figures cover the last minute: long enough to smooth
# micro-batch jitter.
STREAM_WINDOW = timedelta(minutes=1)


def stream_now(window: timedelta) -> tuple[str, list[object]]:
    """The stream's headline figures over the last `window`, the latest batch's lag and models,
    and the queries that cannot read end offsets: one query for `status` and the dashboard."""
    sql = """
        WITH recent AS (SELECT * FROM stream_metrics WHERE recorded_at >= now() - %s),
             latest AS (SELECT lag_total, model_versions, recorded_at FROM stream_metrics
                        ORDER BY recorded_at DESC LIMIT 1)
        SELECT (SELECT coalesce(sum(input_rows), 0)::float8 FROM recent) AS rows,
               (SELECT sum(event_latency_p50_ms * input_rows) / NULLIF(sum(input_rows), 0)
                  FROM recent) AS p50_ms,
               (SELECT max(event_latency_p99_ms) FROM recent) AS p99_ms,
               (SELECT coalesce(sum(dead_lettered), 0)::bigint FROM recent) AS dead_lettered,
               (SELECT lag_total FROM latest) AS lag,
               (SELECT model_versions FROM latest) AS model_versions,
               (SELECT recorded_at FROM latest) AS last_batch_at,
               (SELECT jsonb_agg(jsonb_build_object('query', query_name, 'since', since,
                                                    'detail', detail))
                  FROM stream_health WHERE end_offsets = 'unavailable') AS blind"""
    return sql, [window]


def ensure_databases(settings: Settings) -> list[str]:
    """Create the app, Airflow and MLflow databases if missing; returns those created."""
    conn = connect(settings, "postgres")
    conn.autocommit = True
    created = []
    try:
        with conn.cursor() as cur:
            for name in (settings.app_db, settings.airflow_db, settings.mlflow_db):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
    finally:
        conn.close()
    return created


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_lower_snake.sql")
        migrations.append(Migration(int(match.group(1)), path))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number in {sql_dir}")
    return migrations


def migrate(conn: psycopg2.extensions.connection, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations in order; returns the file names applied."""
    applied_now = []
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        cur.execute("""
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())""")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version, name, checksum FROM schema_migrations")
            done = {v: (n, c) for v, n, c in cur.fetchall()}
        conn.commit()
        for migration in discover(sql_dir):
            if migration.version in done:
                name, checksum = done[migration.version]
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"{migration.path.name} changed after it was applied (as {name}); "
                        "never edit an applied migration, add a new one")
                continue
            with conn, conn.cursor() as cur:
                cur.execute(migration.path.read_text())
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.path.name, migration.checksum))
            applied_now.append(migration.path.name)
    finally:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now
