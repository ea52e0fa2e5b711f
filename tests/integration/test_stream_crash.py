"""kill -9 of the streaming driver mid-stream, restart from the checkpoint: the incidents table
equals that of an uninterrupted run over the same events — nothing lost, nothing duplicated."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from patternalarm import db
from patternalarm.settings import PROJECT_ROOT
from tests.conftest import own_topics, wait_until

pytestmark = pytest.mark.integration

BIN = os.path.dirname(sys.executable)
DOMAINS = "payments,gaming"  # IoT silence timers fire by watermark, which batch sizes move
COLUMNS = ("incident_key, domain, entity_id, detector, window_start, severity, event_count, "
           "first_event_time, last_event_time")


def job(env: dict, query: str, *extra: str) -> list[str]:
    return [f"{BIN}/spark-submit", "--master", "local[2]",
            str(PROJECT_ROOT / "streaming" / "job.py"), "--domains", DOMAINS,
            "--query-name", query, *extra]


_OURS = ("domain IN ('payments', 'gaming') AND first_event_time >= %s "
         "AND first_event_time < %s + interval '30 minutes'")


def incidents(cfg, since: datetime) -> set[tuple]:
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM incidents WHERE {_OURS}", (since, since))
        return set(cur.fetchall())


def clear(cfg, since: datetime) -> None:
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM incidents WHERE {_OURS}", (since, since))


def batches(cfg, query: str) -> int:
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM stream_batches WHERE query_name = %s", (query,))
        return cur.fetchone()[0]


def test_kill_9_of_the_driver_loses_and_duplicates_nothing(stack):
    cfg, env = own_topics("k")
    prefix = cfg.topic_prefix
    # Two hours back: other tests' events (the acceptance run covers the last half hour) share
    # entity ids, so only a time range of its own keeps this test's incidents apart.
    start = datetime.now(UTC) - timedelta(hours=2)
    generated = subprocess.run(
        [f"{BIN}/patternalarm", "generate", "--domain", DOMAINS, "--rate", "300",
         "--duration", "1200", "--seed", "5", "--start-time",
         str(int(start.timestamp() * 1000)), "--anomaly-rate", "0.006", "--no-db", "--json"],
        env=env, capture_output=True, text=True, timeout=600)
    assert generated.returncode == 0, generated.stderr[-2000:]

    reference = subprocess.run(job(env, f"ref-{prefix}", "--available-now"), env=env,
                               capture_output=True, text=True, timeout=1200)
    assert reference.returncode == 0, reference.stdout[-3000:]
    expected = incidents(cfg, start)
    assert len(expected) >= 10
    clear(cfg, start)

    # Small micro-batches, so the kill lands mid-stream with batches still to come.
    crash_env = {**env, "PATTERNALARM_STREAM_MAX_OFFSETS_PER_TRIGGER": "1000",
                 "PATTERNALARM_STREAM_TRIGGER_S": "0"}
    query = f"crash-{prefix}"
    with open(cfg.var_dir / f"{query}.log", "wb") as log:
        driver = subprocess.Popen(job(crash_env, query), env=crash_env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: batches(cfg, query) >= 3, timeout_s=600)
    finally:
        # kill -9 of the whole driver: JVM, Python workers, no shutdown hook runs.
        for proc in psutil.Process(driver.pid).children(recursive=True) + [
                psutil.Process(driver.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        driver.wait()
    committed_before_restart = batches(cfg, query)
    assert incidents(cfg, start) != expected  # the kill really was mid-stream

    restarted = subprocess.run(job(crash_env, query, "--available-now"), env=crash_env,
                               capture_output=True, text=True, timeout=1200)
    assert restarted.returncode == 0, restarted.stdout[-3000:]
    assert batches(cfg, query) > committed_before_restart
    assert incidents(cfg, start) == expected
