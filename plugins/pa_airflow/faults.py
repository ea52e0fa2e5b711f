"""Faults injected into the embedded services, through the same Supervisor that runs them.

Each method returns what was really done (pids, times), which the chaos verdict records.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pa_airflow.stream import StreamJob
from patternalarm import kafka
from patternalarm.services import broker_spec, postgres_spec
from patternalarm.settings import Settings
from patternalarm.supervisor import ProcessSpec, ServiceError, Supervisor


class FaultInjector:
    def __init__(self, cfg: Settings, stream: StreamJob) -> None:
        self.cfg = cfg
        self.stream = stream
        self.supervisor = Supervisor(cfg.var_dir)

    def kill_driver(self) -> dict[str, Any]:
        """kill -9 of the stream's driver, then a restart from its checkpoint."""
        pid = self.stream.kill_driver()
        self.stream.ensure()
        return {"killed_pid": pid, "signal": "SIGKILL", "restarted_pid": self.stream.pid()}

    def restart_broker(self) -> dict[str, Any]:
        if not self.cfg.embedded_kafka:
            raise ServiceError("the broker is external: restart it by its own means")
        spec = broker_spec(self.cfg)
        stopped = time.time()
        down = self._bounce(spec, 0.0)
        # The memory engine comes back empty, and acknowledges produce requests to a topic it
        # has yet to create without keeping them (measured): recreate the topics at once.
        kafka.ensure_topics(self.cfg, self.cfg.all_topics, self.cfg.topic_partitions)
        return {**down, "storage": self.cfg.broker_storage,
                "topics_back_s": round(time.time() - stopped, 1)}

    def postgres_outage(self, seconds: float) -> dict[str, Any]:
        """Stop the embedded PostgreSQL for `seconds`. Airflow's scheduler shuts down when its
        metadata database goes away, after the running tasks (this one) finish: a detached
        `patternalarm.heal` starts it again then (see there)."""
        if not self.cfg.embedded_postgres:
            raise ServiceError("PostgreSQL is external: an outage cannot be injected here")
        down = self._bounce(postgres_spec(self.cfg), seconds)
        back = datetime.now(UTC)
        with open(self.supervisor.log_path("heal"), "ab") as log:
            healer = subprocess.Popen([sys.executable, "-m", "patternalarm.heal",
                                       back.isoformat()], stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        return {**down, "healer_pid": healer.pid}

    def _bounce(self, spec: ProcessSpec, down_s: float) -> dict[str, Any]:
        """Stop the service's process group, stay down `down_s`, start it, wait until healthy."""
        proc = self.supervisor.process(spec.name)
        if proc is None:
            raise ServiceError(f"{spec.name} is not running under this var dir")
        stopped = time.time()
        self.supervisor.stop(spec)
        time.sleep(max(0.0, down_s - (time.time() - stopped)))
        self.supervisor.start(spec)
        self.supervisor.wait_healthy(spec, self.cfg.startup_timeout_s)
        return {"service": spec.name, "stopped_pid": proc.pid,
                "down_s": round(time.time() - stopped, 1)}
