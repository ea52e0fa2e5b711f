"""The streaming job end to end: generator → broker → spark-submit streaming/job.py → Postgres.

CI-sized: 30 minutes of event time per domain at ~1 event per entity per minute, sent as fast
as the broker takes it (the schedule starts in the past), then one `--available-now` run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from patternalarm import db, kafka
from patternalarm.quality import detection_quality
from patternalarm.settings import DOMAINS
from tests.conftest import (
    clear_incidents,
    cmdline,
    committed_batches,
    incidents,
    own_topics,
    run_stream_available_now,
    stream_job,
    wait_until,
)

pytestmark = pytest.mark.integration

MINUTES = 30
WARMUP = timedelta(minutes=10)
VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def run(stack):
    """Topics of its own (a fresh prefix), one generator run, one job run."""
    cfg, env = own_topics("t")
    # Six hours back, a time range of its own: quality is judged on every incident of the range,
    # and the other stream tests' runs (the demo-quality run, the DAGs' live traffic, the
    # hostile-input run near now, the crash runs four hours back) share entity ids.
    start = datetime.now(UTC) - timedelta(hours=6, minutes=MINUTES + 1)
    generated = subprocess.run(
        [f"{VENV_BIN}/patternalarm", "generate", "--domain", ",".join(DOMAINS),
         "--rate", "300", "--duration", str(MINUTES * 60), "--seed", "11",
         "--start-time", str(int(start.timestamp() * 1000)), "--anomaly-rate", "0.006",
         "--malformed-fraction", "0.003", "--label-delay", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=600)
    assert generated.returncode == 0, generated.stderr[-3000:]
    summary = json.loads(generated.stdout)
    query = f"accept-{cfg.topic_prefix}"
    run_stream_available_now(env, query)
    return {"cfg": cfg, "env": env, "summary": summary, "query": query, "start": start}


def test_every_message_is_processed_or_dead_lettered(run):
    summary, cfg = run["summary"], run["cfg"]
    malformed = sum(d["malformed"] for d in summary["per_domain"].values())
    assert malformed > 0
    with contextlib.closing(db.connect(cfg)) as conn, conn.cursor() as cur:
        cur.execute("""SELECT sum(input_rows), sum(dead_lettered) FROM stream_metrics
                       WHERE query_name = %s""", (run["query"],))
        rows, dead = cur.fetchone()
    assert rows == summary["sent"]
    assert dead == malformed
    assert sum(kafka.end_offsets(cfg, [cfg.dlq_topic]).values()) == malformed


def test_incidents_match_injected_episodes(run):
    summary = run["summary"]
    with contextlib.closing(db.connect(run["cfg"])) as conn:
        quality = detection_quality(
            conn, [summary["run_id"]], list(DOMAINS), since=run["start"] + WARMUP,
            until=run["start"] + timedelta(minutes=MINUTES))
    report = {d: q.as_dict() for d, q in quality.items()}
    assert set(quality) == set(DOMAINS)
    for q in quality.values():
        assert q.episodes >= 15, report
        assert q.recall >= 0.95, report
        assert q.precision >= 0.90, report


def test_a_model_trains_on_the_features_the_stream_logged(run, spark, capsys):
    """Training source `lake`: the stream's feature rows joined with the run's ground truth."""
    from spark_jobs.train_model import main

    code = main(["--source", "lake", "--domain", "gaming", "--model-name",
                 f"lake-{run['query']}", "--max-iter", "10", "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["holdout_positives"] > 0 and metrics["roc_auc"] > 0.8


def test_the_cluster_finds_the_same_incidents(run, cluster):
    """The same events through master + 2 workers x 1 core, code and Python shipped: the
    incidents equal local[2]'s, column by column (they merge by key, so the local run's are
    set aside and cleared first)."""
    cfg, start = run["cfg"], run["start"]
    local = incidents(cfg, DOMAINS, start, MINUTES)
    assert len(local) >= 30
    clear_incidents(cfg, DOMAINS, start, MINUTES)
    run_stream_available_now(run["env"], f"cluster-{cfg.topic_prefix}", master=cluster)
    assert incidents(cfg, DOMAINS, start, MINUTES) == local


def test_a_worker_killed_mid_stream_loses_nothing(run, cluster, stack):
    """kill -9 of a worker with everything under it (its executor and Python workers) once the
    run has committed a batch: Spark runs the lost tasks again on the other worker, the
    supervisor restarts the dead one, and the incidents equal the uninterrupted run's.
    Before get_spark honoured spark-submit's --master, this found no executor on the workers:
    every "cluster" run had been local."""
    import psutil

    from patternalarm.cluster import Cluster
    from patternalarm.settings import env_key

    def outside_silences(found: set[tuple]) -> set[tuple]:
        # Silences fire by watermark, which the small batches here move (as in the driver
        # crash tests): the reference ran in one or two batches.
        return {incident for incident in found if incident[3] != "silence"}

    cfg, start = run["cfg"], run["start"]
    reference = outside_silences(incidents(cfg, DOMAINS, start, MINUTES))
    assert len(reference) >= 30
    clear_incidents(cfg, DOMAINS, start, MINUTES)
    query = f"workerkill-{cfg.topic_prefix}"
    argv, cwd = stream_job(query, "--available-now", master=cluster)
    log_path = stack.var_dir / f"{query}.log"
    with open(log_path, "wb") as log:  # small batches: the kill lands with most still to come
        job = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                               env={**run["env"],
                                    env_key("stream_max_offsets_per_trigger"): "2000"},
                               start_new_session=True)
    try:
        supervisor = Cluster(stack).supervisor

        def executor_under_worker() -> list[psutil.Process]:
            assert job.poll() is None, log_path.read_text()[-3000:]
            worker = supervisor.process("spark-worker-1")
            tree = [worker, *worker.children(recursive=True)] if worker else []
            executors = [p for p in tree if "CoarseGrainedExecutorBackend" in cmdline(p)]
            return tree if executors and committed_batches(cfg, query) >= 1 else []

        wait_until(executor_under_worker, timeout_s=600)
        victims = executor_under_worker()
        committed_at_kill = committed_batches(cfg, query)
        for proc in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        assert job.wait(timeout=1500) == 0, log_path.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
    assert committed_batches(cfg, query) > committed_at_kill  # the kill was mid-stream
    wait_until(lambda: supervisor.process("spark-worker-1") not in (None, *victims),
               timeout_s=120)
    assert outside_silences(incidents(cfg, DOMAINS, start, MINUTES)) == reference
