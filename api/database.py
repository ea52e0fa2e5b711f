"""The app database as the API sees it: a small thread-safe pool opened on first use.

Routes that touch Postgres are plain ``def`` functions, run in FastAPI's thread pool, so the
blocking driver never stalls the event loop that serves /predict. That pool has more threads
than this one has connections: a request waits a moment for a free connection, then gets 503.
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

# Errors of the server or the connection, not of our SQL (those are ProgrammingError and
# friends, bugs that stay 500): lost or refused connections, admin shutdown, statement timeout,
# too many clients, disk full, a serialization failure. A retry may well succeed.
_TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.InternalError)


class DatabaseUnavailable(RuntimeError):
    """Postgres cannot serve the request now; answered with 503 and Retry-After."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Database:
    RETRY_AFTER_S = 5     # Postgres down or failing: a restart takes seconds
    BUSY_RETRY_S = 1      # every connection busy: one frees up as soon as a query ends

    def __init__(self, settings: Settings, max_connections: int = 8, wait_s: float = 2.0):
        self._url = db.url(settings, settings.app_db)
        self.max_connections = max_connections
        self.wait_s = wait_s
        # psycopg2's pool raises at once when exhausted; this makes requests queue for a while.
        self._free = threading.BoundedSemaphore(max_connections)
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                # minconn 0: no connection until a request needs one, so the API starts (and
                # answers /health) while Postgres is still down.
                self._pool = psycopg2.pool.ThreadedConnectionPool(
                    0, self.max_connections, self._url, connect_timeout=3)
            return self._pool

    def _unavailable(self, exc: Exception) -> DatabaseUnavailable:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
        return DatabaseUnavailable(f"PostgreSQL at {mask_url(self._url)}: {reason}",
                                   self.RETRY_AFTER_S)

    @contextmanager
    def cursor(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        """A dict cursor in one transaction: committed on success, rolled back on error."""
        if not self._free.acquire(timeout=self.wait_s):
            raise DatabaseUnavailable(
                f"all {self.max_connections} connections to PostgreSQL are busy "
                f"(waited {self.wait_s:g}s); retry shortly", self.BUSY_RETRY_S)
        try:
            with self._connection() as conn, \
                    conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
        finally:
            self._free.release()

    @contextmanager
    def _connection(self) -> Iterator[psycopg2.extensions.connection]:
        pool = self._get_pool()
        try:
            conn = pool.getconn()
        except psycopg2.OperationalError as exc:
            raise self._unavailable(exc) from exc
        broken = False
        try:
            yield conn
        except _TRANSIENT as exc:
            broken = True  # it may be dead (a server restart kills pooled connections)
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
