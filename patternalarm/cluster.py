"""A Spark standalone cluster on this machine: one master and N workers from the pyspark
package's own launcher (`spark-class ...Master` / `...Worker`), each under a watchdog like the
embedded services, bound to BIND_HOST.

The workers are what a real cluster's machines would be: their own work directories under
var/cluster/, no PYTHONPATH, no .venv on their PATH, started outside the checkout. Executors run
the Python environment and code that each job ships (patternalarm/shipping.py), never this
checkout's; jobs reach the cluster by PATTERNALARM_SPARK_MASTER=spark://BIND_HOST:PORT.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from patternalarm import java, shipping
from patternalarm.services import SPARK_LOG4J, VENV_BIN, http_ok
from patternalarm.settings import Settings, env_key
from patternalarm.supervisor import ProcessSpec, Status, Supervisor

# The daemons only schedule and launch executors: a small heap each leaves the memory to them.
DAEMON_MEMORY = "256m"


def master_url(cfg: Settings) -> str:
    return f"spark://{cfg.bind_host}:{cfg.cluster_master_port}"


def _master_ui(cfg: Settings) -> str:
    return f"http://{cfg.bind_host}:{cfg.cluster_ui_port}"


def _worker_ui_port(cfg: Settings, index: int) -> int:
    return cfg.cluster_worker_ui_port + index - 1


def alive_workers(cfg: Settings) -> list[dict]:
    """The workers the master counts as ALIVE (its UI's JSON), or [] when it does not answer."""
    try:
        with urllib.request.urlopen(f"{_master_ui(cfg)}/json/", timeout=2) as resp:
            state = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]


def _daemon_env(cfg: Settings) -> dict[str, str]:
    """What a node's Spark daemons would have: Java and an address, nothing of the project's
    Python. The supervisor adds these to its own environment, so the project's Python variables
    are blanked rather than left out (Spark drops empty PYTHONPATH entries)."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and p != str(VENV_BIN))
    # The pyspark package is this node's Spark installation (spark-class would otherwise ask
    # a Python on the PATH to import pyspark to find it).
    spark_home = Path(importlib.util.find_spec("pyspark").origin).parent
    return {"JAVA_HOME": str(java.find(cfg)), "SPARK_HOME": str(spark_home),
            "SPARK_LOCAL_IP": cfg.bind_host,
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "SPARK_DAEMON_JAVA_OPTS": f"-Dlog4j2.configurationFile={SPARK_LOG4J}",
            "PATH": path, "PYTHONPATH": "", "VIRTUAL_ENV": "", "PYSPARK_PYTHON": "",
            "PYSPARK_DRIVER_PYTHON": ""}


def master_spec(cfg: Settings) -> ProcessSpec:
    work = cfg.var_dir / "cluster" / "master"
    return ProcessSpec(
        name="spark-master",
        argv=[str(VENV_BIN / "spark-class"), "org.apache.spark.deploy.master.Master",
              "--host", cfg.bind_host, "--port", str(cfg.cluster_master_port),
              "--webui-port", str(cfg.cluster_ui_port)],
        ports={cfg.cluster_master_port: env_key("cluster_master_port"),
               cfg.cluster_ui_port: env_key("cluster_ui_port")},
        env=_daemon_env(cfg),
        cwd=work,
        healthy=lambda: http_ok(f"{_master_ui(cfg)}/json/"),
        prepare=lambda: work.mkdir(parents=True, exist_ok=True),
        url=f"{master_url(cfg)} (UI {_master_ui(cfg)})",
        restart=True,
    )


def worker_spec(cfg: Settings, index: int) -> ProcessSpec:
    work = cfg.var_dir / "cluster" / f"worker-{index}"
    ui_port = _worker_ui_port(cfg, index)
    ui = f"http://{cfg.bind_host}:{ui_port}"

    def prepare() -> None:
        # Applications' directories hold each run's copy of the shipped environment.
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)

    return ProcessSpec(
        name=f"spark-worker-{index}",
        argv=[str(VENV_BIN / "spark-class"), "org.apache.spark.deploy.worker.Worker",
              "--host", cfg.bind_host, "--cores", str(cfg.cluster_worker_cores),
              "--memory", cfg.cluster_worker_memory, "--work-dir", str(work),
              "--webui-port", str(ui_port), master_url(cfg)],
        ports={ui_port: f"{env_key('cluster_worker_ui_port')} (+{index - 1})"},
        env={**_daemon_env(cfg),
             # Finished applications' directories (with their unpacked environments) go
             # after 10 minutes instead of piling up.
             "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true "
                                  "-Dspark.worker.cleanup.interval=300 "
                                  "-Dspark.worker.cleanup.appDataTtl=600"},
        cwd=cfg.var_dir / "cluster",
        healthy=lambda: any(w.get("webuiaddress", "").endswith(f":{ui_port}")
                            for w in alive_workers(cfg)),
        prepare=prepare,
        url=f"{ui} (work dir {work})",
        restart=True,
    )


@dataclass
class Cluster:
    cfg: Settings

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.cfg.var_dir)

    def specs(self) -> list[ProcessSpec]:
        return [master_spec(self.cfg)] + [worker_spec(self.cfg, i)
                                          for i in range(1, self.cfg.cluster_workers + 1)]

    def up(self, log=print) -> str:
        """Start what is not running, wait until every worker registered; the master URL."""
        java.find(self.cfg)
        # Jobs submitted from here on need it; building it now keeps their start short.
        shipping.build_env(self.cfg, log=log)
        for spec in self.specs():
            self.supervisor.start(spec)
            self.supervisor.wait_healthy(spec, self.cfg.startup_timeout_s)
        return master_url(self.cfg)

    def down(self) -> list[str]:
        """Stop the workers, then the master (the workers would reconnect for a while)."""
        return [spec.name for spec in reversed(self.specs())
                if self.supervisor.stop(spec, timeout_s=30)]

    def status(self) -> list[Status]:
        return [self.supervisor.status(spec) for spec in self.specs()]
