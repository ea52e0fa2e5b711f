"""Retraining around spark_jobs/train_model.py: inputs before it, its decision after it.

The job itself builds the training set, runs the Great Expectations gate (exit 3 on a
violation), trains, scores the champion on the same holdout and moves the alias; it logs all
of it to MLflow. The decision is read back from its MLflow run over REST (no mlflow import in
the task) so the Airflow log and XCom carry it too.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import requests

from patternalarm import db
from patternalarm.settings import Settings

EXPERIMENT = "patternalarm-training"  # spark_jobs/train_model.py's default


class MissingInput(RuntimeError):
    pass


def check_inputs(cfg: Settings, domain: str, source: str) -> dict[str, int]:
    """What the lake source would train on; raises MissingInput when it cannot train."""
    if source == "bootstrap":
        return {}
    files = len(list((cfg.lake_dir / "features").glob(f"batch_id=*/domain={domain}/*.parquet")))
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ground_truth WHERE domain = %s", (domain,))
        episodes = cur.fetchone()[0]
    if not files or not episodes:
        raise MissingInput(f"the lake has {files} feature files and ground truth has {episodes} "
                           f"episodes for {domain}: run the stream with labelled traffic "
                           "first (load DAG), or retrain with source=bootstrap")
    return {"lake_files": files, "episodes": episodes}


def decision(cfg: Settings, domain: str, since: datetime) -> dict[str, Any]:
    """The training run of `domain` that started after `since`: version, scores, decision."""
    api = f"{cfg.tracking_uri}/api/2.0/mlflow"
    exp = requests.get(f"{api}/experiments/get-by-name",
                       params={"experiment_name": EXPERIMENT}, timeout=10)
    exp.raise_for_status()
    found = requests.post(f"{api}/runs/search", timeout=10, json={
        "experiment_ids": [exp.json()["experiment"]["experiment_id"]],
        "filter": f"tags.domain = '{domain}' and attributes.start_time >= "
                  f"{int(since.timestamp() * 1000)}",
        "order_by": ["attributes.start_time DESC"], "max_results": 1})
    found.raise_for_status()
    runs = found.json().get("runs")
    if not runs:
        raise LookupError(f"no MLflow training run for {domain} since {since.isoformat()}")
    data = runs[0]["data"]
    metrics = {m["key"]: m["value"] for m in data.get("metrics", [])}
    params = {p["key"]: p["value"] for p in data.get("params", [])}
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    alias = params.get("promotion_alias")
    return {"run_id": runs[0]["info"]["run_id"], "model_name": tags.get("model_name"),
            "new_pr_auc": metrics.get("pr_auc"),
            "champion_pr_auc": metrics.get("promotion_champion_pr_auc"),
            "champion_version": params.get("promotion_champion_version"),
            # The model's incident precision on the live-rate replay: the promotion gate.
            "replay_precision": metrics.get("replay_model_precision"),
            "champion_replay_precision": metrics.get("promotion_champion_replay_precision"),
            "target_precision": params.get("target_precision"),
            "promoted": alias == "champion",
            "decision": tags.get("promotion_reason") or "not compared (promote=false)"}
