"""/predict latency and /predict/batch throughput over HTTP, next to Spark's per-job path on the
same model.

Trains the GBT of benchmarks/scoring.py, promotes it to champion in a throw-away registry
(SQLite in a temp dir), starts the API (uvicorn, as `patternalarm api` does) on a free port
against it, and times a bounded loop of requests over keep-alive HTTP on localhost. Client-side
times: they include HTTP parsing on both sides, which is what a caller pays.

    python benchmarks/api.py [--requests 5000] [--warmup-s 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks import scoring  # noqa: E402
from patternalarm import secrets, settings  # noqa: E402
from patternalarm.services import api_spec  # noqa: E402
from patternalarm.settings import model_name  # noqa: E402
from tests.conftest import free_port  # noqa: E402

DOMAIN = "payments"
BATCH_SIZES = (100, 1000, 10000)
BATCH_CALLS = {100: 200, 1000: 40, 10000: 10}
SPARK_SIZES = {1: 30, 1000: 5}  # calls of Spark's per-request job per batch size


def post(conn: http.client.HTTPConnection, path: str, body: bytes, key: str) -> dict:
    conn.request("POST", path, body, {"Content-Type": "application/json", "X-API-Key": key})
    resp = conn.getresponse()
    payload = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status}: {payload[:300]!r}")
    return json.loads(payload)


def promote(model_path: Path, tracking_uri: str, artifacts: Path) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient
    from pyspark.ml import PipelineModel

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("bench-api", artifact_location=artifacts.as_uri())
    name = model_name(DOMAIN)
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.spark.log_model(PipelineModel.load(str(model_path)), "model",
                                      registered_model_name=name,
                                      pip_requirements=["pyspark==4.3.0"])
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri).set_registered_model_alias(name, "champion", version)
    return version


def run(args: argparse.Namespace, tmp: Path) -> int:
    from pyspark.ml import PipelineModel

    from models.spark import get_spark

    # The API reads its settings from the environment, as under `patternalarm up`. Postgres
    # is a closed port: /predict needs none.
    env = {"PATTERNALARM_VAR_DIR": str(tmp / "var"), "PATTERNALARM_API_PORT": str(free_port()),
           "PATTERNALARM_POSTGRES_PORT": str(free_port()),
           "PATTERNALARM_MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    os.environ.update(env)
    settings.get.cache_clear()
    cfg = settings.get()

    spark = get_spark("patternalarm-bench-api", args.master)
    model_path = tmp / "model"
    print(f"training GBT ({args.trees} trees, depth {args.depth}) ...", flush=True)
    scoring.train(spark, model_path, args.trees, args.depth)
    version = promote(model_path, cfg.tracking_uri, tmp / "artifacts")
    model = PipelineModel.load(str(model_path))

    data = scoring.synthetic(max(BATCH_SIZES), 2).drop(columns="label")
    items = [{"domain": DOMAIN, "features": row} for row in data.to_dict("records")]
    single = [json.dumps(item).encode() for item in items[:1000]]
    key = secrets.load(cfg)["api_key"]

    spec = api_spec(cfg)
    server = subprocess.Popen(spec.argv, env={**os.environ, **spec.env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = http.client.HTTPConnection(cfg.bind_host, cfg.api_port, timeout=60)
        deadline = time.monotonic() + 120
        while True:  # bounded: the first call also loads the champion from the registry
            try:
                answer = post(conn, "/predict", single[0], key)
                break
            except (ConnectionError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                conn.close()
                time.sleep(0.2)
        assert answer["model_version"] == version, answer

        for body in single[:500]:  # warm-up, not measured
            post(conn, "/predict", body, key)
        latencies = np.empty(args.requests)
        for i in range(args.requests):
            body = single[i % len(single)]
            start = time.perf_counter_ns()
            post(conn, "/predict", body, key)
            latencies[i] = (time.perf_counter_ns() - start) / 1e6

        batch_rows = []
        for n in BATCH_SIZES:
            body = json.dumps({"items": items[:n]}).encode()
            post(conn, "/predict/batch", body, key)  # warm-up
            calls = scoring.timed_ms(lambda b=body: post(conn, "/predict/batch", b, key),
                                     BATCH_CALLS[n])
            batch_rows.append((n, float(np.median(calls))))
        conn.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

    def spark_job(n: int) -> list:
        frame = spark.createDataFrame(data.iloc[:n])
        return model.transform(frame).select("probability").collect()

    print(f"Spark warm-up {args.warmup_s:.0f} s (not measured) ...", flush=True)
    deadline = time.monotonic() + args.warmup_s
    while time.monotonic() < deadline:
        spark_job(1)
    spark_ms = {n: float(np.median(scoring.timed_ms(lambda n=n: spark_job(n), calls)))
                for n, calls in SPARK_SIZES.items()}
    spark.stop()

    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"\nmodel: GBT {args.trees} trees, depth {args.depth}, {len(data.columns)} features; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    print(f"/predict, {args.requests} sequential requests: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
          f"(Spark per-request job, N=1: p50 {spark_ms[1]:.1f} ms, {spark_ms[1] / p50:,.0f}× "
          "slower)\n")
    print("| path | N | ms/call | µs/prediction | predictions/s |")
    print("|---|---:|---:|---:|---:|")
    for n, ms in batch_rows:
        print(f"| /predict/batch | {n} | {ms:.2f} | {1000 * ms / n:.1f} | {n / ms * 1000:,.0f} |")
    for n, ms in spark_ms.items():
        print(f"| Spark job | {n} | {ms:.1f} | {1000 * ms / n:,.1f} | {n / ms * 1000:,.0f} |")

    best = max(n / ms * 1000 for n, ms in batch_rows)
    goals = [("/predict p50 < 2 ms", p50 < 2.0), ("/predict p99 < 10 ms", p99 < 10.0),
             ("/predict/batch >= 20,000 predictions/s", best >= 20_000)]
    for goal, met in goals:
        print(f"{'MET ' if met else 'MISS'} {goal}")
    return 0 if all(met for _, met in goals) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="/predict calls timed")
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pa-bench-api-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
