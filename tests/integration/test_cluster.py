"""The Spark standalone cluster of `patternalarm cluster`: executors run the shipped Python and
code (never this checkout's), the retrain DAG trains on it, and `down` leaves nothing behind.
The streaming job on it: tests/integration/test_stream.py (same incidents as local[2]) and
test_stream_crash.py (kill -9 of a worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from patternalarm import settings as settings_mod
from patternalarm import shipping
from patternalarm.settings import PROJECT_ROOT
from tests.conftest import cmdline
from tests.integration.test_dags_airflow import dags_test

pytestmark = pytest.mark.integration

PROBE = '''
import json
from pyspark.sql import SparkSession


def where(_):
    import sys
    found = {"python": sys.executable}
    try:
        import patternalarm.settings
        import streaming.kafka_source  # noqa: F401
        found["patternalarm"] = patternalarm.settings.__file__
    except ImportError as exc:
        found["error"] = str(exc)
    yield found


spark = SparkSession.builder.getOrCreate()
print(json.dumps(spark.sparkContext.parallelize(range(2), 2).mapPartitions(where).collect()))
spark.stop()
'''


def probe(tmp_path: Path, master: str, conf: dict[str, str]) -> list[dict]:
    """What executors see: their Python, and where they import the project from."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "spark-submit"), "--master", master,
         *[arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")],
         str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
        # spark-submit finds Spark through this Python; the executors' comes from `conf`.
        env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_executors_run_the_shipped_environment_and_code(cluster, stack, tmp_path):
    shipped = shipping.spark_conf(stack, cluster)
    for found in probe(tmp_path, cluster, shipped):
        python = Path(found["python"])
        assert python.is_relative_to(stack.var_dir / "cluster")  # a worker's work dir
        assert python.parent.parent.name == shipping.ENV_NAME
        assert f"{shipping.CODE_ZIP}/patternalarm/" in found["patternalarm"], found
        assert not found["patternalarm"].startswith(str(PROJECT_ROOT / "patternalarm"))

    # Without the code zip, the same executors cannot import the project at all.
    without_code = {k: v for k, v in shipped.items()
                    if k not in ("spark.submit.pyFiles", "spark.executorEnv.PYTHONPATH")}
    for found in probe(tmp_path, cluster, without_code):
        assert "No module named 'patternalarm'" in found.get("error", ""), found
        assert not Path(found["python"]).is_relative_to(PROJECT_ROOT / ".venv")


def test_the_retrain_dag_trains_on_the_cluster(cluster, stack):
    """SparkSubmitOperator submits train_model.py to spark://, shipping code and environment."""
    on_cluster = settings_mod.load(spark_master=cluster)
    state, tasks, out = dags_test(on_cluster, "patternalarm_retrain", {
        "domain": "payments", "source": "bootstrap", "promote": False}, timeout_s=900)
    assert state == "success", out[-5000:]
    assert tasks["train"] == "success" and tasks["kept"] == "success"
    assert f"--master {cluster}" in out and "patternalarm-code.zip" in out, out[-5000:]
    assert "new PR-AUC" in out


def test_down_leaves_nothing_running(cluster, stack):
    from patternalarm.cluster import Cluster

    started = Cluster(stack)
    members = [proc for spec in started.specs()
               for proc in started.supervisor._group_members(spec.name)]
    assert any("deploy.worker.Worker" in cmdline(p) for p in members)

    assert len(started.down()) == 1 + stack.cluster_workers
    assert not [p for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    leftovers = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                 if str(stack.var_dir / "cluster") in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    assert all(not row.running for row in started.status())
