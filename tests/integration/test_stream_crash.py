"""Faults mid-stream against one uninterrupted reference run over the same events: kill -9 of
the streaming driver (restart from the checkpoint), and kill -9 of PostgreSQL under traffic
(the supervisor restarts it, the sink retries): each time the incidents table equals the
reference — nothing lost, nothing duplicated."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from patternalarm.settings import PROJECT_ROOT
from tests import conftest
from tests.conftest import committed_batches, own_topics, processed, wait_until

pytestmark = pytest.mark.integration

BIN = os.path.dirname(sys.executable)
DOMAINS = "payments,gaming"  # IoT silence timers fire by watermark, which batch sizes move
MINUTES = 30


def job(env: dict, query: str, *extra: str) -> list[str]:
    return [f"{BIN}/spark-submit", "--master", "local[2]",
            str(PROJECT_ROOT / "streaming" / "job.py"), "--domains", DOMAINS,
            "--query-name", query, *extra]


def incidents(cfg, since: datetime) -> set[tuple]:
    return conftest.incidents(cfg, DOMAINS.split(","), since, MINUTES)


def clear(cfg, since: datetime) -> None:
    conftest.clear_incidents(cfg, DOMAINS.split(","), since, MINUTES)


@pytest.fixture(scope="module")
def reference(stack):
    """Topics of its own with 20 minutes of events, and the incidents of one uninterrupted
    `--available-now` run over them; the incidents are cleared for the fault runs."""
    cfg, env = own_topics("k")
    # Four hours back: other tests' events share entity ids (the acceptance run lies six hours
    # back, the big-partition run's history up to 82 minutes back, the rest near now), so only
    # a time range of its own keeps this module's incidents apart.
    start = datetime.now(UTC) - timedelta(hours=4)
    generated = subprocess.run(
        [f"{BIN}/patternalarm", "generate", "--domain", DOMAINS, "--rate", "300",
         "--duration", "1200", "--seed", "5", "--start-time",
         str(int(start.timestamp() * 1000)), "--anomaly-rate", "0.006", "--no-db", "--json"],
        env=env, capture_output=True, text=True, timeout=600)
    assert generated.returncode == 0, generated.stderr[-2000:]

    reference = subprocess.run(job(env, f"ref-{cfg.topic_prefix}", "--available-now"), env=env,
                               capture_output=True, text=True, timeout=1200)
    assert reference.returncode == 0, reference.stdout[-3000:]
    expected = incidents(cfg, start)
    assert len(expected) >= 10
    # Small micro-batches, so a fault lands mid-stream with batches still to come.
    fault_env = {**env, "PATTERNALARM_STREAM_MAX_OFFSETS_PER_TRIGGER": "1000",
                 "PATTERNALARM_STREAM_TRIGGER_S": "0"}
    return {"cfg": cfg, "env": fault_env, "start": start, "expected": expected,
            "sent": json.loads(generated.stdout)["sent"]}


def test_kill_9_of_the_driver_loses_and_duplicates_nothing(reference):
    cfg, crash_env, start = reference["cfg"], reference["env"], reference["start"]
    expected = reference["expected"]
    clear(cfg, start)
    query = f"crash-{cfg.topic_prefix}"
    with open(cfg.var_dir / f"{query}.log", "wb") as log:
        driver = subprocess.Popen(job(crash_env, query), env=crash_env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: committed_batches(cfg, query) >= 3, timeout_s=600)
    finally:
        # kill -9 of the whole driver: JVM, Python workers, no shutdown hook runs.
        for proc in psutil.Process(driver.pid).children(recursive=True) + [
                psutil.Process(driver.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        driver.wait()
    committed_before_restart = committed_batches(cfg, query)
    assert incidents(cfg, start) != expected  # the kill really was mid-stream

    restarted = subprocess.run(job(crash_env, query, "--available-now"), env=crash_env,
                               capture_output=True, text=True, timeout=1200)
    assert restarted.returncode == 0, restarted.stdout[-3000:]
    assert committed_batches(cfg, query) > committed_before_restart
    assert incidents(cfg, start) == expected


def test_kill_9_of_postgres_under_traffic_loses_and_duplicates_nothing(reference):
    """The supervisor brings PostgreSQL back; the running job rides out the outage (its sink
    retries on new connections) and commits every batch exactly once."""
    from patternalarm.services import Stack

    cfg, env, start = reference["cfg"], reference["env"], reference["start"]
    clear(cfg, start)
    query = f"pgkill-{cfg.topic_prefix}"
    supervisor = Stack(cfg).supervisor
    log_path = cfg.var_dir / f"{query}.log"
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(job(env, query), env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: committed_batches(cfg, query) >= 3, timeout_s=600)
        postgres = supervisor.process("postgres")
        postgres.send_signal(signal.SIGKILL)
        wait_until(lambda: supervisor.process("postgres") not in (None, postgres),
                   timeout_s=60)

        def caught_up() -> bool:
            assert driver.poll() is None, log_path.read_text()[-3000:]
            try:
                return processed(cfg, query) >= reference["sent"]
            except ConnectionError:  # Postgres still starting
                return False

        wait_until(caught_up, timeout_s=900)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGTERM)
        driver.wait(120)
    output = log_path.read_text()
    assert "postgres_unavailable" in output  # the outage really hit the running job
    assert processed(cfg, query) == reference["sent"]
    assert incidents(cfg, start) == reference["expected"]
