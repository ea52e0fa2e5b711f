"""Start the embedded services again once Airflow's scheduler gave up on a database outage.

    python -m patternalarm.heal SINCE_ISO

Airflow's scheduler does not survive its metadata database going away: it shuts down, but under
the LocalExecutor only after its running tasks finish (measured). A task that caused the outage
(the chaos DAG) can therefore neither wait for the scheduler's death nor restart it itself; it
starts this detached watcher instead. The watcher returns when the scheduler heartbeats after
SINCE (it survived) or, once the scheduler is gone, after `Stack.up()` started what died.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import datetime

from patternalarm import db
from patternalarm import settings as settings_mod
from patternalarm.services import Stack
from patternalarm.supervisor import Supervisor

WATCH_LIMIT_S = 3600.0


def scheduler_beat_since(cfg: settings_mod.Settings, since: datetime) -> bool:
    """Whether a running scheduler job wrote a heartbeat to Airflow's database after `since`."""
    try:
        with contextlib.closing(db.connect(cfg, cfg.airflow_db)) as conn, conn.cursor() as cur:
            cur.execute("""SELECT 1 FROM job WHERE job_type = 'SchedulerJob'
                           AND state = 'running' AND latest_heartbeat > %s""", (since,))
            return cur.fetchone() is not None
    except ConnectionError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    since = datetime.fromisoformat(args[0])
    cfg = settings_mod.get()
    supervisor = Supervisor(cfg.var_dir)
    deadline = time.monotonic() + WATCH_LIMIT_S
    while supervisor.process("airflow-scheduler") is not None:
        if scheduler_beat_since(cfg, since) or time.monotonic() > deadline:
            return 0
        time.sleep(1.0)
    Stack(cfg).up()
    print(f"services started again after the outage of {since.isoformat()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
