"""/predict and /predict/batch through the stack's API process, with a tiny model trained by
Spark and promoted in the stack's MLflow: answers equal Spark's, batches equal single calls."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, RandomForestClassifier
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array

from models import explain
from models.features import FEATURES, compute
from models.local_scorer import compile_model
from patternalarm import secrets
from patternalarm.settings import model_name
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

DOMAIN = "iot"
NAMES = list(FEATURES[DOMAIN])


def feature_rows(n: int, seed: int) -> pd.DataFrame:
    """IoT feature vectors where spikes and stuck runs are the anomalies."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "value": np.round(rng.normal(21, 3, n), 2), "spike_z": rng.exponential(1.5, n),
        "drift_z": rng.exponential(0.5, n), "repeat_run": rng.poisson(1, n) + 1.0,
        "secs_since_last": rng.exponential(10, n), "gap_ratio": rng.exponential(1, n),
        "battery_pct": np.round(rng.uniform(5, 100, n), 1),
        "history_len": rng.integers(0, 1000, n).astype(float)})
    logit = 0.9 * frame.spike_z + 0.8 * frame.repeat_run - 6.0
    frame["label"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    return frame


@pytest.fixture(scope="module")
def champion(stack, spark, tmp_path_factory):
    """Train a small GBT on the iot features, register it and make it the champion."""
    path = tmp_path_factory.mktemp("api-model") / "model"
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=NAMES, outputCol="features"),
                                GBTClassifier(maxIter=15, maxDepth=4, seed=3)])
    model = pipeline.fit(spark.createDataFrame(feature_rows(3_000, 1)))
    model.write().overwrite().save(str(path))
    mlflow.set_tracking_uri(stack.tracking_uri)
    name = model_name(DOMAIN)
    with mlflow.start_run():
        info = mlflow.spark.log_model(model, "model", registered_model_name=name,
                                      pip_requirements=["pyspark==4.3.0"])
    version = str(info.registered_model_version)
    client = MlflowClient(stack.tracking_uri)
    client.set_model_version_tag(name, version, "threshold", "0.4")
    client.set_registered_model_alias(name, "champion", version)
    return name, version, path


@pytest.fixture(scope="module")
def api(stack):
    base = f"http://{stack.bind_host}:{stack.api_port}"
    with httpx.Client(base_url=base, headers={"X-API-Key": secrets.load(stack)["api_key"]},
                      timeout=60) as client:
        yield client


def served_version(api, version: str) -> None:
    """The API follows the alias on its own; wait until it serves `version`."""
    def serves() -> bool:
        resp = api.post("/predict", json={"domain": DOMAIN,
                                          "features": dict.fromkeys(NAMES, 1.0)})
        return resp.status_code == 200 and resp.json()["model_version"] == version

    wait_until(serves, 60)


def test_predictions_equal_spark_and_batches_equal_single_calls(api, champion, spark):
    name, version, path = champion
    served_version(api, version)
    rows = feature_rows(300, 2)[NAMES]
    items = [{"domain": DOMAIN, "features": row} for row in rows.to_dict("records")]

    batch = api.post("/predict/batch", json={"items": items})
    assert batch.status_code == 200
    answers = batch.json()["items"]
    singles = [api.post("/predict", json=item).json() for item in items[:50]]
    # Equal but for the last bits of the probability: the scorer's GBT margin is a BLAS
    # matrix-vector product, whose summation order differs between one row and many.
    for single, answer in zip(singles, answers, strict=False):
        assert single["probability"] == pytest.approx(answer["probability"], rel=1e-12, abs=0)
        assert {**single, "probability": None} == {**answer, "probability": None}

    scored = PipelineModel.load(str(path)).transform(spark.createDataFrame(rows))
    expected = np.array([r.p1 for r in scored.select(
        vector_to_array("probability")[1].alias("p1")).collect()])
    got = np.array([a["probability"] for a in answers])
    assert np.abs(got - expected).max() <= 1e-9
    assert all(a["model_name"] == name and a["model_version"] == version for a in answers)
    assert all(a["threshold"] == 0.4 and a["anomaly"] == (a["probability"] > 0.4)
               for a in answers)
    assert 0 < sum(a["anomaly"] for a in answers) < len(answers)
    assert all(len(a["top_features"]) == 3 and a["top_features"][0]["feature"] in NAMES
               for a in answers)


def test_contributions_add_up_to_the_gbt_log_odds(champion):
    _, _, path = champion
    scorer = compile_model(path)
    x = scorer.matrix(feature_rows(500, 4)[NAMES])
    why = explain.contributions(scorer, x, scorer._leaves(x))
    p1 = scorer.predict_proba(x)
    np.testing.assert_allclose(explain.bias(scorer) + why.sum(axis=1), np.log(p1 / (1 - p1)),
                               atol=1e-9)


def test_contributions_add_up_to_the_forest_probability(spark, tmp_path):
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=NAMES, outputCol="features"),
                                RandomForestClassifier(numTrees=10, maxDepth=4, seed=3)])
    pipeline.fit(spark.createDataFrame(feature_rows(2_000, 5))).write().save(str(tmp_path / "m"))
    scorer = compile_model(tmp_path / "m")
    x = scorer.matrix(feature_rows(500, 6)[NAMES])
    why = explain.contributions(scorer, x, scorer._leaves(x))
    np.testing.assert_allclose(explain.bias(scorer) + why.sum(axis=1), scorer.predict_proba(x),
                               atol=1e-12)


def test_events_are_turned_into_the_streams_features(api, champion):
    _, version, _ = champion
    served_version(api, version)
    t0 = 1_750_000_000_000
    events = [{"event_id": f"e{i}", "domain": DOMAIN, "entity_id": "device-9",
               "event_time": t0 + 10_000 * i, "schema_version": 1,
               "payload": {"sensor_type": "temperature", "value": 21.0 + (i % 3) * 0.1,
                           "battery_pct": 80.0}} for i in range(30)]
    events[-1]["payload"]["value"] = 60.0  # a spike on the scored (last) event
    from_events = api.post("/predict", json={"domain": DOMAIN, "events": events[::-1]})
    assert from_events.status_code == 200, from_events.text

    frame = pd.DataFrame([{"entity_id": e["entity_id"], "event_time": e["event_time"],
                           **e["payload"]} for e in events])
    last = compute(DOMAIN, frame).iloc[-1][NAMES].to_dict()
    from_features = api.post("/predict", json={"domain": DOMAIN, "features": last}).json()
    assert from_events.json() == from_features


def test_a_model_feature_missing_from_the_body_is_422(api, champion):
    served_version(api, champion[1])
    features = dict.fromkeys(NAMES[1:], 1.0)
    resp = api.post("/predict/batch", json={"items": [
        {"domain": DOMAIN, "features": dict.fromkeys(NAMES, 1.0)},
        {"domain": DOMAIN, "features": features}]})
    assert resp.status_code == 422
    (error,) = resp.json()["detail"]
    assert error["loc"] == ["body", "items", 1, "features"] and NAMES[0] in error["msg"]


def test_metrics_show_predictions_and_the_model_version(api, champion):
    name, version, _ = champion
    served_version(api, version)
    text = api.get("/metrics").text
    assert f'pa_model_info{{domain="{DOMAIN}",model_name="{name}",version="{version}"}} 1.0' \
        in text
    assert f'pa_predictions_total{{decision="false",domain="{DOMAIN}"}}' in text


def test_health_answers_while_a_big_batch_is_scored(api, champion):
    """Decoding, validating and scoring run in worker threads: the event loop keeps serving."""
    served_version(api, champion[1])
    rows = feature_rows(3_000, 7)[NAMES].to_dict("records")
    t0 = 1_750_000_000_000
    history = [{"event_id": f"e{i}", "domain": DOMAIN, "entity_id": "device-7",
                "event_time": t0 + 10_000 * i, "schema_version": 1,
                "payload": {"sensor_type": "temperature", "value": 21.0 + (i % 5) * 0.1}}
               for i in range(1_000)]
    # Both kinds of item, near the body limit: seconds of CPU work for the server.
    items = ([{"domain": DOMAIN, "events": history}] * 25
             + [{"domain": DOMAIN, "features": r} for r in rows] * 3)
    health_latencies = []
    with ThreadPoolExecutor(1) as thread:
        started = time.monotonic()
        batch = thread.submit(api.post, "/predict/batch", json={"items": items})
        while not batch.done():
            sent = time.monotonic()
            assert api.get("/health").status_code == 200
            health_latencies.append(time.monotonic() - sent)
        elapsed = time.monotonic() - started
    assert batch.result().status_code == 200, batch.result().text[:500]
    print(f"batch {elapsed:.2f}s, {len(health_latencies)} /health answers meanwhile, "
          f"max {max(health_latencies) * 1000:.0f} ms, "
          f"median {sorted(health_latencies)[len(health_latencies) // 2] * 1000:.0f} ms")
    # A loop blocked by the batch answers /health only once the batch is done: one answer, two
    # if the first /health overtook the batch. Counted, not timed, so a loaded or a fast box
    # cannot fail it (the latencies printed above are the measurement).
    assert len(health_latencies) >= 3
