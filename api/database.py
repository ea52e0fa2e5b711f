"""The app database as the API sees it: a small thread-safe pool opened on first use.

Routes that touch Postgres are plain ``def`` functions, run in FastAPI's thread pool, so the
blocking driver never stalls the event loop that serves /predict.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extras
import psycopg2.pool

from patternalarm import db
from patternalarm.settings import Settings, mask_url


class DatabaseUnavailable(RuntimeError):
    """Postgres cannot be reached; answered with 503."""


class Database:
    def __init__(self, settings: Settings, max_connections: int = 8):
        self._url = db.url(settings, settings.app_db)
        self._max = max_connections
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                # minconn 0: no connection until a request needs one, so the API starts (and
                # answers /health) while Postgres is still down.
                self._pool = psycopg2.pool.ThreadedConnectionPool(
                    0, self._max, self._url, connect_timeout=3)
            return self._pool

    def _unavailable(self, exc: Exception) -> DatabaseUnavailable:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
        return DatabaseUnavailable(f"PostgreSQL at {mask_url(self._url)}: {reason}")

    @contextmanager
    def cursor(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        """A dict cursor in one transaction: committed on success, rolled back on error."""
        pool = self._get_pool()
        try:
            conn = pool.getconn()
        except psycopg2.OperationalError as exc:
            raise self._unavailable(exc) from exc
        broken = False
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True  # a server restart kills pooled connections: drop this one
            raise self._unavailable(exc) from exc
        finally:
            pool.putconn(conn, close=broken or conn.closed != 0)

    def ping(self) -> bool:
        try:
            with self.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except DatabaseUnavailable:
            return False

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None
