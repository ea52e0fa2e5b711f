"""The local scorer against Spark itself, and champion loading from a real MLflow server."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, RandomForestClassifier
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from models.local_scorer import LocalScorer, compile_model
from models.registry import ChampionScorer, load_champion

pytestmark = pytest.mark.integration

FEATURES = ["amount", "count_1h", "ratio", "gap_s", "channel"]
N_CHANNELS = 6
TOLERANCE = 1e-9


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """Numeric features, several heavily duplicated (integers, a coarse grid), one categorical."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "amount": np.round(rng.lognormal(3.0, 1.0, n), 2),
        "count_1h": rng.poisson(3, n).astype(float),
        "ratio": np.round(rng.uniform(0, 4, n) * 4) / 4,
        "gap_s": rng.exponential(60.0, n),
        "channel": rng.integers(0, N_CHANNELS, n).astype(float),
    })
    logit = (0.02 * frame.amount + 0.5 * frame.count_1h - 1.2 * frame.ratio
             - 0.01 * frame.gap_s + np.where(frame.channel.isin([1, 4]), 1.5, -0.5) - 1.0)
    frame["label"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    return frame


def to_spark(spark: SparkSession, frame: pd.DataFrame):
    """Spark frame with `channel` marked nominal, so the trees may split on category sets."""
    sdf = spark.createDataFrame(frame)
    meta = {"ml_attr": {"type": "nominal", "name": "channel",
                        "vals": [str(i) for i in range(N_CHANNELS)]}}
    return sdf.withColumn("channel", F.col("channel").alias("channel", metadata=meta))


def train(spark: SparkSession, estimator, path: Path) -> Path:
    # keep: NaN in scored rows flows through the trees, which the scorer must reproduce.
    assembler = VectorAssembler(inputCols=FEATURES, outputCol="features", handleInvalid="keep")
    model = Pipeline(stages=[assembler, estimator]).fit(to_spark(spark, synthetic(12_000, 1)))
    model.write().overwrite().save(str(path))
    return path


def scoring_rows(scorer: LocalScorer) -> pd.DataFrame:
    """12,000 fresh rows, then rows sitting exactly on, just below and just above every
    continuous split threshold, a few NaNs, and categories the model never saw."""
    base = synthetic(12_000, 2).drop(columns="label")
    rng = np.random.default_rng(3)
    edges = []
    splits = (scorer.cat_slot < 0) & ~np.isnan(scorer.threshold)
    for feature, threshold in sorted(set(zip(scorer.feature[splits], scorer.threshold[splits],
                                             strict=True))):
        for value in (np.nextafter(threshold, -np.inf), threshold,
                      np.nextafter(threshold, np.inf)):
            row = base.iloc[[rng.integers(len(base))]].copy()
            row[scorer.features[feature]] = value
            edges.append(row)
    odd = base.sample(300, random_state=4).copy()
    odd.iloc[:100, odd.columns.get_loc("gap_s")] = np.nan
    odd.iloc[100:200, odd.columns.get_loc("channel")] = rng.choice([-1.0, 2.5, 6.0, 9.0], 100)
    odd.iloc[200:, odd.columns.get_loc("count_1h")] = np.nan
    return pd.concat([base, *edges, odd], ignore_index=True)


def spark_scores(spark: SparkSession, path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    scored = PipelineModel.load(str(path)).transform(to_spark(spark, rows.assign(
        row=np.arange(len(rows)))))
    out = scored.select("row", vector_to_array("probability")[1].alias("p1"), "prediction")
    return out.toPandas().sort_values("row").reset_index(drop=True)


@pytest.fixture(scope="module")
def gbt_path(spark, tmp_path_factory) -> Path:
    return train(spark, GBTClassifier(maxIter=30, maxDepth=5, seed=7),
                 tmp_path_factory.mktemp("gbt") / "model")


@pytest.fixture(scope="module")
def rf_path(spark, tmp_path_factory) -> Path:
    return train(spark, RandomForestClassifier(numTrees=40, maxDepth=6, seed=7),
                 tmp_path_factory.mktemp("rf") / "model")


@pytest.mark.parametrize("which", ["gbt", "rf"])
def test_local_scorer_equals_spark(which, spark, request):
    path = request.getfixturevalue(f"{which}_path")
    scorer = compile_model(path)
    assert scorer.kind == which
    assert scorer.features == tuple(FEATURES)
    assert len(scorer.cat_left) > 0, "the model should split on the categorical feature"
    rows = scoring_rows(scorer)
    assert len(rows) >= 10_000

    expected = spark_scores(spark, path, rows)
    p1, label = scorer.score(rows)

    diff = np.abs(p1 - expected["p1"].to_numpy())
    print(f"{which}: max |p_local - p_spark| = {diff.max():.3e} over {len(rows)} rows")
    assert diff.max() <= TOLERANCE
    np.testing.assert_array_equal(label, expected["prediction"].to_numpy() == 1.0)
    assert 0 < label.sum() < len(label), "both classes should be predicted"
    # One row at a time (the API's path) gives the batch's numbers exactly.
    singles = [scorer.predict_proba(rows.iloc[[i]])[0] for i in range(0, len(rows), 25)]
    np.testing.assert_array_equal(singles, p1[::25])


def test_spark_thresholds_param_decides_labels(spark, gbt_path, tmp_path):
    model = PipelineModel.load(str(gbt_path))
    model.stages[-1].setThresholds([0.3, 0.7])
    model.write().overwrite().save(str(tmp_path / "m"))
    scorer = compile_model(tmp_path / "m")
    rows = synthetic(2_000, 5).drop(columns="label")

    expected = spark_scores(spark, tmp_path / "m", rows)
    np.testing.assert_array_equal(scorer.predict(rows), expected["prediction"].to_numpy() == 1.0)
    # The thresholds change the decision, not the probability.
    assert scorer.predict(rows).sum() < compile_model(gbt_path).predict(rows).sum()


def register(client: MlflowClient, name: str, model_path: Path) -> str:
    with mlflow.start_run():
        info = mlflow.spark.log_model(
            PipelineModel.load(str(model_path)), "model", registered_model_name=name,
            # Given explicitly: inference would spend ~35 s importing and probing packages.
            pip_requirements=["pyspark==4.3.0"])
    return str(info.registered_model_version)


def test_champion_is_loaded_and_swapped_without_restart(stack, spark, gbt_path, rf_path):
    mlflow.set_tracking_uri(stack.tracking_uri)
    client = MlflowClient(stack.tracking_uri)
    name = f"test-scorer-{uuid.uuid4().hex[:8]}"
    rows = synthetic(500, 6).drop(columns="label")

    v1 = register(client, name, gbt_path)
    client.set_registered_model_alias(name, "champion", v1)
    scorer, version = load_champion(name, client=client)
    assert (version, scorer.kind) == (v1, "gbt")
    np.testing.assert_array_equal(scorer.predict_proba(rows),
                                  compile_model(gbt_path).predict_proba(rows))

    holder = ChampionScorer(name, client=client, refresh_interval_s=0.2)
    assert holder.version == v1
    assert holder.refresh() is False  # the alias has not moved

    v2 = register(client, name, rf_path)
    client.set_registered_model_alias(name, "champion", v2)
    assert holder.refresh() is True
    assert (holder.version, holder.scorer.kind) == (v2, "rf")
    np.testing.assert_array_equal(holder.predict_proba(rows),
                                  compile_model(rf_path).predict_proba(rows))

    # The background check finds a move on its own (here: a rollback to v1).
    client.set_registered_model_alias(name, "champion", v1)
    with holder:
        deadline = time.monotonic() + 60
        while holder.version != v1 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert (holder.version, holder.scorer.kind) == (v1, "gbt")
