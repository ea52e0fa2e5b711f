"""Shared fixtures. Integration tests get the real embedded stack, started once per session in
its own var dir (removed afterwards) on free ports: a developer's running stack is untouched."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from patternalarm import db, kafka
from patternalarm import settings as settings_mod
from patternalarm.settings import PROJECT_ROOT, Settings, env_key

_PORT_FIELDS = ("postgres_port", "broker_port", "s3_port", "mlflow_port", "airflow_port",
                "airflow_scheduler_health_port", "api_port", "cluster_master_port",
                "cluster_ui_port")


def wait_until(condition, timeout_s: float = 10.0) -> None:
    """Poll a condition (never a bare sleep as synchronisation); fail if it never holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_run(n: int) -> int:
    """First of n consecutive free ports (the cluster's workers' UIs), below Linux's ephemeral
    range: outgoing connections there took a neighbour of a port that was free a moment ago."""
    rng = random.Random(os.getpid())
    while True:
        base = rng.randrange(20_000, 32_000 - n)
        try:
            for port in range(base, base + n):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """PATTERNALARM_* environment of the test stack, exported for this process and children."""
    # One dir per test process: parallel runs (a developer's and CI's) never share a stack.
    var_dir = PROJECT_ROOT / "var" / f"test-stack-{os.getpid()}"
    env = {env_key("var_dir"): str(var_dir)}
    env.update({env_key(f): str(free_port()) for f in _PORT_FIELDS})
    env[env_key("cluster_worker_ui_port")] = str(
        free_port_run(settings_mod.Settings.model_fields["cluster_workers"].default))
    # The CI machine has 2 cores: Spark jobs in tests use both.
    env[env_key("spark_master")] = "local[2]"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings_mod.get.cache_clear()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    settings_mod.get.cache_clear()


@pytest.fixture(scope="session")
def stack(stack_env: dict[str, str]) -> Iterator[Settings]:
    """The whole embedded stack (Postgres, broker, MLflow, Airflow), up and healthy."""
    from patternalarm.services import Stack

    cfg = settings_mod.get()
    services = Stack(cfg)
    try:
        services.up()
        yield cfg
    finally:
        if not all(status.running for status in services.status()):
            # A service died during the session: keep its logs for whoever reads the failure.
            shutil.copytree(cfg.var_dir / "log",
                            PROJECT_ROOT / "test-artifacts" / f"stack-logs-{os.getpid()}",
                            dirs_exist_ok=True)
        services.down()
        shutil.rmtree(cfg.var_dir, ignore_errors=True)


def produce_in_batches(cfg, topic: str, n: int) -> dict[int, int]:
    """Produce n messages with batching on (several records per batch); count acks per partition."""
    producer = kafka.producer(cfg, **{"linger.ms": 50, "batch.num.messages": 500})
    acked: dict[int, int] = {}

    def on_delivery(err, msg):
        assert err is None, err
        acked[msg.partition()] = acked.get(msg.partition(), 0) + 1

    for i in range(n):
        producer.produce(topic, key=f"entity-{i % 37}", value=b"{}", on_delivery=on_delivery)
    assert producer.flush(30) == 0
    return acked


@pytest.fixture
def clean_settings_env(monkeypatch, tmp_path):
    """Defaults only: no PATTERNALARM_* from the shell, the test stack or a developer's .env,
    and a var dir of the test's own."""
    for key in [k for k in os.environ if k.startswith(settings_mod.ENV_PREFIX)]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(env_key("var_dir"), str(tmp_path / "var"))
    settings_mod.get.cache_clear()
    yield
    settings_mod.get.cache_clear()


def stream_job(query: str, *args: str, master: str = "local[2]"
               ) -> tuple[list[str], Path | None]:
    """spark-submit streaming/job.py to `master` (a cluster gets the code and environment
    shipped): the command line and the directory to run it from."""
    from patternalarm import shipping

    cfg = settings_mod.get()
    return ([str(Path(sys.executable).parent / "spark-submit"), "--master", master,
             *shipping.submit_args(cfg, master), str(PROJECT_ROOT / "streaming" / "job.py"),
             "--query-name", query, *args], shipping.submit_dir(cfg, master))


def run_stream_available_now(env: dict[str, str], query: str, *args: str,
                             master: str = "local[2]",
                             **settings: str) -> subprocess.CompletedProcess:
    """The job with --available-now under `env` (plus PATTERNALARM_<settings>); asserts that it
    ended well."""
    argv, cwd = stream_job(query, "--available-now", *args, master=master)
    done = subprocess.run(argv, env={**env, **{env_key(k): v for k, v in settings.items()}},
                          capture_output=True, text=True, timeout=1800, cwd=cwd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def cmdline(proc) -> str:
    """A process's command line, or "" once it has exited (a service's short-lived child may
    exit between a listing and the read)."""
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def processed(cfg, query: str) -> int:
    """The messages `query`'s committed batches took in (events and dead letters)."""
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(input_rows), 0) FROM stream_metrics "
                    "WHERE query_name = %s", (query,))
        return int(cur.fetchone()[0])


def committed_batches(cfg, query: str) -> int:
    """The micro-batches `query` committed: its rows in the batch ledger."""
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM stream_batches WHERE query_name = %s", (query,))
        return cur.fetchone()[0]


INCIDENT_COLUMNS = ("incident_key, domain, entity_id, detector, window_start, severity, "
                    "event_count, first_event_time, last_event_time")


def _in_range(domains: Sequence[str]) -> str:
    return (f"domain IN ({', '.join(repr(d) for d in domains)}) AND first_event_time >= %s "
            "AND first_event_time < %s + %s * interval '1 minute'")


def incidents(cfg, domains: Sequence[str], since: datetime, minutes: int) -> set[tuple]:
    """The incidents of `domains` that started in a run's time range."""
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute(f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE {_in_range(domains)}",
                    (since, since, minutes))
        return set(cur.fetchall())


def clear_incidents(cfg, domains: Sequence[str], since: datetime, minutes: int) -> None:
    """Forget them, so that another run over the same events is compared from nothing."""
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM incidents WHERE {_in_range(domains)}", (since, since, minutes))


def own_topics(letter: str) -> tuple[Settings, dict[str, str]]:
    """Topics of a fresh prefix, created, with the environment that points a job or a
    generator run at them: a test's events never mix with another's."""
    prefix = f"{letter}{uuid.uuid4().hex[:8]}"
    cfg = settings_mod.load(topic_prefix=prefix)
    kafka.ensure_topics(cfg, cfg.all_topics, cfg.topic_partitions)
    env = {**os.environ, env_key("topic_prefix"): prefix, "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": cfg.bind_host}
    return cfg, env
