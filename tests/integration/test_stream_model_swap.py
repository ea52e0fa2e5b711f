"""Moving the `champion` alias: the running streaming job scores with the new version within
30 s, without a restart (the version each micro-batch used is in stream_metrics)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.ml import Pipeline
from pyspark.ml.classification import GBTClassifier
from pyspark.ml.feature import VectorAssembler

from models.features import FEATURES
from models.training_data import bootstrap_frame
from patternalarm import db
from patternalarm.settings import PROJECT_ROOT, model_name
from tests.conftest import own_topics, wait_until

pytestmark = pytest.mark.integration

BIN = os.path.dirname(sys.executable)
DOMAIN = "payments"


def register(spark, seed: int) -> str:
    """A small real GBT on bootstrap features, registered under the domain's model name."""
    frame = bootstrap_frame(DOMAIN, seed=seed, minutes=10, entities=300)
    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=list(FEATURES[DOMAIN]), outputCol="features"),
        GBTClassifier(labelCol="label", maxIter=5, maxDepth=3, seed=seed)])
    model = pipeline.fit(spark.createDataFrame(frame))
    with mlflow.start_run():
        info = mlflow.spark.log_model(model, "model", registered_model_name=model_name(DOMAIN),
                                      pip_requirements=["pyspark==4.3.0"])
    return str(info.registered_model_version)


def versions_used(cfg, query: str, after: float) -> list[str]:
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("""SELECT model_versions ->> %s FROM stream_metrics
                       WHERE query_name = %s AND extract(epoch FROM recorded_at) > %s
                       ORDER BY batch_id""", (DOMAIN, query, after))
        return [r[0] for r in cur.fetchall()]


def test_alias_move_reaches_the_running_job_within_30_s(stack, spark):
    mlflow.set_tracking_uri(stack.tracking_uri)
    client = MlflowClient(stack.tracking_uri)
    first, second = register(spark, 1), register(spark, 2)
    client.set_registered_model_alias(model_name(DOMAIN), "champion", first)

    cfg, env = own_topics("m")
    env["PATTERNALARM_MODEL_REFRESH_S"] = "2"
    query = f"swap-{cfg.topic_prefix}"
    with open(stack.var_dir / f"{query}.log", "wb") as log:
        job = subprocess.Popen(
            [f"{BIN}/spark-submit", "--master", "local[2]",
             str(PROJECT_ROOT / "streaming" / "job.py"), "--domains", DOMAIN,
             "--query-name", query], env=env, stdout=log, stderr=subprocess.STDOUT)
        traffic = subprocess.Popen(
            [f"{BIN}/patternalarm", "generate", "--domain", DOMAIN, "--rate", "1200",
             "--duration", "600", "--no-db", "--json"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: first in versions_used(cfg, query, 0), timeout_s=600)
            moved_at = time.time()
            client.set_registered_model_alias(model_name(DOMAIN), "champion", second)
            wait_until(lambda: second in versions_used(cfg, query, moved_at), timeout_s=120)
            swapped_after = time.time() - moved_at
        finally:
            traffic.terminate()
            job.terminate()
            traffic.wait(30)
            job.wait(120)
    assert '"event": "failed"' not in (stack.var_dir / f"{query}.log").read_text()
    assert swapped_after <= 30, f"new champion used after {swapped_after:.0f} s"
