"""The streaming job as Airflow tasks see it: ensure it runs, stop it, kill -9 its driver.

One stream per var dir (the Supervisor's `stream` process, the one `patternalarm stream`
starts), so load and chaos runs measure the job the dashboard shows rather than a private
copy.
"""

from __future__ import annotations

import contextlib
import signal
import time

from patternalarm import db
from patternalarm.services import stream_spec
from patternalarm.settings import DOMAINS, Settings
from patternalarm.supervisor import ProcessSpec, ServiceError, Supervisor

STARTED = b'"event": "started"'


class StreamJob:
    def __init__(self, cfg: Settings, query_name: str = "detector") -> None:
        self.cfg = cfg
        self.query_name = query_name
        self.supervisor = Supervisor(cfg.var_dir)

    @property
    def spec(self) -> ProcessSpec:
        # Every domain, so one stream serves any run; the query name picks checkpoint and ledger.
        return stream_spec(self.cfg, "--domains", ",".join(DOMAINS),
                           "--query-name", self.query_name)

    def pid(self) -> int | None:
        proc = self.supervisor.process(self.spec.name)
        return proc.pid if proc else None

    def ensure(self, timeout_s: float = 240.0) -> bool:
        """Start the job unless it runs; wait until its query has started. True if started.

        A running job must be this query: measuring another one's batches would be wrong.
        """
        proc = self.supervisor.process(self.spec.name)
        if proc:
            argv = proc.cmdline()
            running = argv[argv.index("--query-name") + 1] if "--query-name" in argv \
                else "detector"
            if running != self.query_name:
                raise ServiceError(f"the stream runs query {running!r}, not {self.query_name!r}:"
                                   " stop it (`patternalarm stream stop`) or use its name")
            return False
        log = self.supervisor.log_path(self.spec.name)
        offset = log.stat().st_size if log.exists() else 0
        self.supervisor.start(self.spec)
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.supervisor.process(self.spec.name):
                raise ServiceError(f"the stream exited during start-up; last lines of {log}:\n"
                                   + self.supervisor.tail(self.spec.name))
            with open(log, "rb") as f:
                f.seek(offset)
                if STARTED in f.read():
                    return True
            if time.monotonic() > deadline:
                raise ServiceError(f"the stream's query did not start in {timeout_s:.0f}s; "
                                   f"see {log}")
            time.sleep(0.5)

    def kill_driver(self) -> int:
        """SIGKILL the driver (no shutdown hook runs); returns its pid."""
        proc = self.supervisor.process(self.spec.name)
        if proc is None:
            raise ServiceError("the stream is not running: nothing to kill")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return proc.pid

    def stop(self) -> bool:
        return self.supervisor.stop(self.spec, timeout_s=60)

    def last_batch(self) -> tuple[int | None, int | None]:
        """(id of the query's latest batch with rows, lag after its latest batch).

        Event-time timers make Spark run batches without input while idle; those do not count
        as activity."""
        with contextlib.closing(db.connect(self.cfg)) as conn, conn, conn.cursor() as cur:
            cur.execute("""SELECT max(batch_id) FILTER (WHERE input_rows > 0),
                                  (array_agg(lag_total ORDER BY batch_id DESC))[1]
                           FROM stream_metrics WHERE query_name = %s""", (self.query_name,))
            return cur.fetchone()

    def wait_idle(self, quiet_s: float = 5.0, timeout_s: float = 300.0) -> None:
        """Until the query's latest batch left no lag and it took no input for `quiet_s`.

        Runs measure the batches after this point: any backlog must be gone first.
        """
        deadline = time.monotonic() + timeout_s
        seen, since = None, time.monotonic()
        while True:
            last = self.last_batch()
            if last[0] != seen:
                seen, since = last[0], time.monotonic()
            elif last[1] == 0 and time.monotonic() - since >= quiet_s:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"the stream did not go idle in {timeout_s:.0f}s "
                                   f"(last batch with input, lag: {last}); other traffic?")
            time.sleep(0.5)
