"""The training job on real Spark and the stack's real MLflow server: train, register, promote,
refuse a worse model, and stop at the Great Expectations gate."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from spark_jobs import train_model as job

pytestmark = pytest.mark.integration

# CI-sized: small trees, few rounds; the signal is strong enough to learn anyway.
SMALL = ["--max-iter", "10", "--max-depth", "3", "--target-precision", "0.8"]


def labelled(n: int = 2500, seed: int = 7) -> pd.DataFrame:
    """A learnable fraud-like label (~15 % positive) from two of four features, in time order."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    logit = -2.5 + 2.5 * x[:, 0] - 2.0 * x[:, 1]
    frame = pd.DataFrame(x, columns=["amount_z", "velocity", "distance", "noise"])
    frame["is_fraud"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame["ts"] = 1_700_000_000_000 + np.arange(n) * 1_000
    frame["merchant"] = "m" + (np.arange(n) % 7).astype(str)  # non-numeric: not a feature
    frame.loc[::101, "distance"] = np.nan  # filled and counted, not dropped
    return frame


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("training") / "labelled.parquet"
    labelled().to_parquet(path)
    return path


@pytest.fixture(scope="module")
def model_name() -> str:
    return f"test-train-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def client(stack) -> MlflowClient:
    mlflow.set_tracking_uri(stack.tracking_uri)
    return MlflowClient(stack.tracking_uri)


def test_train_register_and_promote_first_version(stack, client, spark, data, model_name,
                                                   capsys):
    code = job.main(["--input", str(data), "--label", "is_fraud", "--time-col", "ts",
                     "--model-name", model_name, "--promote", "--json", *SMALL])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["alias"] == "champion" and summary["promotion_reason"] == "no champion yet"
    assert summary["pr_auc"] > 0.6 and summary["roc_auc"] > 0.85
    assert summary["precision_at_threshold"] >= 0.8

    version = client.get_model_version_by_alias(model_name, "champion")
    assert version.version == summary["version"] == "1"
    assert float(version.tags["threshold"]) == summary["threshold"]
    assert version.tags["features"] == "amount_z,velocity,distance,noise"

    run = client.get_run(summary["run_id"])
    assert run.data.metrics["rows_with_missing"] == 25  # every 101st of 2,500 rows
    assert run.data.params["time_column"] == "ts"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "plots", "validation", "scoring.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {f"plots/{name}.png" for name in
                     ("pr_curve", "roc_curve", "score_histogram", "feature_importance")}
    scoring = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/scoring.json")
    assert scoring["threshold"] == summary["threshold"]
    assert scoring["missing_fill_value"] == 0.0


def test_worse_model_becomes_challenger(stack, client, spark, data, model_name, capsys):
    # Same data and holdout, but only the noise feature: the champion must win on this holdout.
    code = job.main(["--input", str(data), "--label", "is_fraud", "--time-col", "ts",
                     "--features", "noise", "--model-name", model_name, "--promote",
                     "--json", *SMALL])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["alias"] == "challenger"
    assert summary["champion_version"] == "1"
    assert summary["champion_pr_auc"] > summary["pr_auc"]

    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    assert client.get_model_version_by_alias(model_name, "challenger").version == "2"
    metrics = client.get_run(summary["run_id"]).data.metrics
    assert metrics["promotion_champion_pr_auc"] == summary["champion_pr_auc"]
    assert metrics["promotion_new_pr_auc"] == summary["pr_auc"]


def test_gate_rejects_nulls_in_label_before_training(stack, client, spark, tmp_path, capsys):
    frame = labelled()
    frame["is_fraud"] = frame["is_fraud"].astype(float)
    frame.loc[::50, "is_fraud"] = np.nan
    frame.to_parquet(tmp_path / "bad.parquet")
    name = f"test-gate-{uuid.uuid4().hex[:8]}"
    code = job.main(["--input", str(tmp_path / "bad.parquet"), "--label", "is_fraud",
                     "--time-col", "ts", "--model-name", name, "--experiment", name, *SMALL])
    assert code == job.EXIT_DATA_REJECTED
    assert "expect_column_values_to_not_be_null" in capsys.readouterr().err

    experiment = client.get_experiment_by_name(name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["gate"] == "failed"
    assert "fit_seconds" not in run.data.metrics  # stopped before training
    report = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/validation/gx_report.json")
    assert report["patternalarm_training"]["success"] is False
    assert client.search_registered_models(f"name = '{name}'") == []


def test_cli_runs_the_job_under_spark_submit(stack, tmp_path):
    """`patternalarm train ...` as a user runs it: CLI -> spark-submit -> the job's exit code.

    (spark-submit merges a Python job's stderr into its stdout.)"""
    result = subprocess.run(
        [sys.executable, "-m", "patternalarm.cli", "train", "--input",
         str(tmp_path / "missing.csv"), "--label", "y", "--model-name", "m"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "missing.csv: no such file" in result.stdout + result.stderr
