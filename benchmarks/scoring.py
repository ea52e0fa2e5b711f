"""Scoring cost: Spark's per-request job against the local scorer, on the same model.

The Spark path is what the reference system paid per request: ``spark.createDataFrame(pandas)``
-> ``model.transform`` -> ``collect``. The local path is ``LocalScorer.predict_proba`` on the
same pandas batch. Both run a warm-up first (the JVM's JIT needs ~45 s on 2 cores) that is not
measured. Prints ms per call (p50) and per prediction for batch sizes 1..10,000 and the ratio.

    python benchmarks/scoring.py                  # trains a GBT on synthetic data first
    python benchmarks/scoring.py --model DIR      # any saved VectorAssembler + GBT/RF pipeline
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from models.local_scorer import LocalScorer, compile_model  # noqa: E402
from models.spark import get_spark  # noqa: E402

SIZES = (1, 10, 100, 1000, 10000)
# Calls per batch size: enough for a stable median without hours of Spark time.
SPARK_CALLS = {1: 40, 10: 40, 100: 20, 1000: 10, 10000: 5}
LOCAL_CALLS = {1: 3000, 10: 3000, 100: 1000, 1000: 200, 10000: 30}
N_FEATURES = 10


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """Numeric features with many repeated values, and a label that depends on most of them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"f{i}": (rng.poisson(3, n).astype(float) if i % 3 == 0
                                    else np.round(rng.normal(size=n), 2))
                          for i in range(N_FEATURES)})
    logit = frame.to_numpy() @ rng.normal(size=N_FEATURES) * 0.5 - 1.0
    frame["label"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    return frame


def train(spark, path: Path, trees: int, depth: int) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import GBTClassifier
    from pyspark.ml.feature import VectorAssembler

    features = [f"f{i}" for i in range(N_FEATURES)]
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=features, outputCol="features"),
                                GBTClassifier(maxIter=trees, maxDepth=depth, seed=1)])
    pipeline.fit(spark.createDataFrame(synthetic(20_000, 1))).write().overwrite().save(str(path))


def timed_ms(call: Callable[[], object], repeats: int) -> np.ndarray:
    out = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter_ns()
        call()
        out[i] = (time.perf_counter_ns() - start) / 1e6
    return out


def run(args: argparse.Namespace) -> int:
    from pyspark.ml import PipelineModel

    spark = get_spark("patternalarm-bench-scoring", args.master)
    with tempfile.TemporaryDirectory(prefix="pa-bench-") as tmp:
        path = Path(args.model) if args.model else Path(tmp) / "model"
        if not args.model:
            print(f"training GBT ({args.trees} trees, depth {args.depth}) ...", flush=True)
            train(spark, path, args.trees, args.depth)
        model = PipelineModel.load(str(path))
        scorer: LocalScorer = compile_model(path)

    data = synthetic(max(SIZES), 2)[list(scorer.features)]

    def spark_path(batch: pd.DataFrame) -> list:
        return model.transform(spark.createDataFrame(batch)).select("probability").collect()

    spark_p1 = np.array([row.probability[1] for row in spark_path(data)])
    max_diff = float(np.abs(scorer.predict_proba(data) - spark_p1).max())

    print(f"warm-up {args.warmup_s:.0f} s (not measured) ...", flush=True)
    deadline = time.monotonic() + args.warmup_s
    while time.monotonic() < deadline:
        for n in SIZES[:4]:
            spark_path(data.iloc[:n])
    timed_ms(lambda: scorer.predict_proba(data.iloc[:100]), 500)

    rows = []
    for n in SIZES:
        batch = data.iloc[:n].copy()
        spark_ms = np.median(timed_ms(lambda b=batch: spark_path(b), SPARK_CALLS[n]))
        local_ms = np.median(timed_ms(lambda b=batch: scorer.predict_proba(b), LOCAL_CALLS[n]))
        rows.append((n, spark_ms, spark_ms / n, local_ms, local_ms / n, spark_ms / local_ms))
        print(f"  N={n} done", flush=True)
    event = data.iloc[0].to_dict()
    single = timed_ms(lambda: scorer.predict_proba(event), 5000)
    spark.stop()

    print(f"\nmodel: {scorer.kind}, {len(scorer.tree_weights)} trees, depth {scorer.depth}, "
          f"{len(scorer.features)} features; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"max |p_local - p_spark| on {len(data)} rows: {max_diff:.2e}\n")
    print("| N | Spark ms/call | Spark ms/pred | local ms/call | local ms/pred | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, s_call, s_pred, l_call, l_pred, ratio in rows:
        print(f"| {n} | {s_call:.2f} | {s_pred:.4f} | {l_call:.3f} | {l_pred:.5f} | "
              f"{ratio:,.0f}× |")
    print(f"\nlocal single event (dict): p50 {np.median(single):.3f} ms, "
          f"p99 {np.percentile(single, 99):.3f} ms")

    by_n = {r[0]: r for r in rows}
    goals = [("local single-row p50 < 1 ms", by_n[1][3] < 1.0),
             ("per-event cost >= 1000x lower at N=1", by_n[1][5] >= 1000),
             ("per-event cost >= 20x lower at N=1000", by_n[1000][5] >= 20),
             ("max |p_local - p_spark| <= 1e-9", max_diff <= 1e-9)]
    for goal, met in goals:
        print(f"{'MET ' if met else 'MISS'} {goal}")
    return 0 if all(met for _, met in goals) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="saved PipelineModel directory (default: train one)")
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--master", default="local[2]")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
