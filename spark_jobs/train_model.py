"""Train a PatternAlarm model with Spark MLlib, gate it with Great Expectations, evaluate it on a
time-ordered holdout, log everything to MLflow and register it (optionally promoting it).

    spark-submit spark_jobs/train_model.py --input data.parquet --label is_fraud \\
        --model-name my-model [--time-col ts] [--features a,b,c] [--promote] [--json]
    spark-submit spark_jobs/train_model.py --source bootstrap --domain payments --promote
    spark-submit spark_jobs/train_model.py --source bootstrap --domain payments,gaming,iot

Sources: ``file`` (any labelled CSV/Parquet file or directory), ``lake`` (feature rows logged by
the stream joined with labels) and ``bootstrap`` (generator events run through the shared
feature code); the last two come from ``models.training_data.load_training_set``, which returns
the feature columns, ``label`` (0/1) and ``event_time`` (epoch ms). Several domains train one
after the other in one Spark session (one JVM start-up instead of one per model), each with its
own result: one failing does not stop the next.

Exit codes: 0 trained; 2 bad input or arguments, found before any Spark work; 3 the data failed
the Great Expectations gate (report logged to MLflow) or cannot be split in time; 1 other errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from patternalarm import settings as settings_mod

EXIT_BAD_INPUT = 2
EXIT_DATA_REJECTED = 3
TIME = "event_time"
# Columns the job or the Spark model creates; a feature with one of these names would clash.
RESERVED = {"label", TIME, "weight", "features", "rawPrediction", "probability", "prediction",
            "score"}
EXPERIMENT = "patternalarm-training"

log = logging.getLogger("train_model")


class InputError(ValueError):
    """Bad arguments or input data, detected before Spark starts."""


@dataclass(frozen=True)
class FileInput:
    path: str
    format: str                 # "csv" | "parquet"
    label: str
    time_col: str | None        # None: file order is time order
    time_is_timestamp: bool
    features: list[str]
    numeric: list[str]          # every numeric column but label and time (features ⊆ numeric)
    csv_schema: list[tuple[str, str]]  # (column, Spark SQL type) of every column, CSV only


# --- arguments --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_model", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("input")
    src.add_argument("--source", choices=("file", "lake", "bootstrap"), default="file")
    src.add_argument("--domain", help=f"domain of the features "
                                      f"({'|'.join(settings_mod.DOMAINS)}); names the model "
                                      "patternalarm-<domain>; lake and bootstrap take a "
                                      "comma-separated list, one model each")
    src.add_argument("--input", help="labelled CSV/Parquet file or directory (source file)")
    src.add_argument("--label", help="label column, 0/1 or boolean (source file)")
    src.add_argument("--time-col", help=f"event time, epoch ms or a timestamp (default: {TIME} "
                                        "if present, else the file's row order)")
    src.add_argument("--features", help="comma-separated feature columns (default: every "
                                        "numeric column but label and time; a domain's "
                                        "feature set for lake/bootstrap)")
    model = p.add_argument_group("model")
    model.add_argument("--model-name", help="registered model name (default "
                                            "patternalarm-<domain>)")
    model.add_argument("--algorithm", choices=("gbt", "rf"), default="gbt")
    model.add_argument("--max-iter", type=int, default=50, help="GBT boosting rounds")
    model.add_argument("--step-size", type=float, default=0.1, help="GBT learning rate")
    model.add_argument("--num-trees", type=int, default=100, help="random forest size")
    model.add_argument("--max-depth", type=int, default=5)
    model.add_argument("--max-bins", type=int, default=32)
    model.add_argument("--min-instances-per-node", type=int, default=1)
    model.add_argument("--subsampling-rate", type=float, default=1.0)
    model.add_argument("--class-weight", choices=("balanced", "none"), default="balanced")
    model.add_argument("--seed", type=int, default=42)
    model.add_argument("--fill-value", type=float, default=0.0,
                       help="value that replaces missing (null/NaN) feature values")
    ev = p.add_argument_group("evaluation and registry")
    ev.add_argument("--holdout-fraction", type=float, default=0.2,
                    help="latest share of rows (by time) held out")
    ev.add_argument("--target-precision", type=float,
                    default=settings_mod.get().target_incident_precision,
                    help="the threshold is the highest-recall one reaching this precision: "
                         "per incident on a replay at the live anomaly rate (lake, "
                         "bootstrap), per row on the holdout (file)")
    ev.add_argument("--live-anomaly-rate", type=float,
                    default=settings_mod.get().live_anomaly_rate,
                    help="episodes started per event in live traffic: the rate of the "
                         "replays that set the threshold and judge the model (lake, bootstrap)")
    ev.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment")
    ev.add_argument("--promote", action="store_true",
                    help="alias the new version champion if it beats the champion, "
                         "else challenger")
    ev.add_argument("--json", action="store_true",
                    help="print the metrics as one JSON object per model, on a line of its "
                         "own as soon as the model is done")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.domains = [d.strip() for d in (args.domain or "").split(",") if d.strip()]
    unknown = [d for d in args.domains if d not in settings_mod.DOMAINS]
    if unknown:
        raise InputError(f"unknown domain {unknown}; choose from {list(settings_mod.DOMAINS)}")
    if len(args.domains) > 1 and (args.source == "file" or args.model_name or args.features):
        raise InputError("several domains take --source lake or bootstrap, and neither "
                         "--model-name nor --features (each domain has its own)")
    args.domain = args.domains[0] if len(args.domains) == 1 else None
    if args.source == "file":
        if not args.input or not args.label:
            raise InputError("--source file needs --input and --label")
    else:
        if not args.domains:
            raise InputError(f"--source {args.source} needs --domain")
        if importlib.util.find_spec("models.training_data") is None:
            raise InputError(f"source {args.source} needs models/training_data.py, "
                             "which is not installed")
    if not args.model_name and not args.domains:
        raise InputError("give --model-name (or --domain for patternalarm-<domain>)")
    if len(args.domains) <= 1:
        args.model_name = args.model_name or f"patternalarm-{args.domain}"
    if not 0.0 < args.holdout_fraction < 1.0:
        raise InputError("--holdout-fraction must be between 0 and 1")
    if not 0.0 < args.target_precision <= 1.0:
        raise InputError("--target-precision must be in (0, 1]")
    if not 0.0 < args.live_anomaly_rate <= 0.1:
        raise InputError("--live-anomaly-rate must be in (0, 0.1]")
    args.features = [c.strip() for c in args.features.split(",") if c.strip()] \
        if args.features else None
    return args


# --- file input, checked without Spark -------------------------------------------------------

def _spark_type(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_integer(arrow_type):
        return "bigint"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "double"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_date(arrow_type):
        return "date"
    return "string"


def _csv_types(files: list[Path]) -> dict:
    """Column types that hold for every row of every file. pyarrow infers a column's type from
    the first block; a later cell that does not fit (R writes 100000 as ``1e+05`` in an
    integer column) fails the read, and that column is widened (integer → double → string)
    and the file read again. Spark then reads with these types, so no cell becomes null."""
    import re

    import pyarrow as pa
    import pyarrow.csv as pacsv

    def wider(a: pa.DataType, b: pa.DataType) -> pa.DataType:
        if a == b:
            return a
        numeric = all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in (a, b))
        return pa.float64() if numeric else pa.string()

    types: dict[str, pa.DataType] = {}
    for file in files:
        widened: dict[str, pa.DataType] = {}
        while True:
            reader = pacsv.open_csv(file, convert_options=pacsv.ConvertOptions(
                column_types=widened))
            try:
                for _batch in reader:
                    pass
            except pa.ArrowInvalid as exc:
                found = re.search(r"CSV column #(\d+)", str(exc))
                field = reader.schema.field(int(found.group(1))) if found else None
                if field is None or pa.types.is_string(field.type):
                    raise
                widened[field.name] = wider(field.type, pa.string() if pa.types.is_floating(
                    field.type) else pa.float64())
                continue
            finally:
                reader.close()
            break
        for field in reader.schema:
            types[field.name] = wider(types.get(field.name, field.type), field.type)
    return types


def inspect_file(path: str, label: str, time_col: str | None,
                 features: list[str] | None) -> FileInput:
    """Schema, label values and emptiness of a file, read with pyarrow (streamed, one column)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds

    source = Path(path)
    if not source.exists():
        raise InputError(f"{path}: no such file or directory")
    suffixes = {s.suffix.lower() for s in ([source] if source.is_file() else source.iterdir())}
    fmt = "parquet" if suffixes & {".parquet", ".pq"} else "csv"
    try:
        file_format = fmt
        if fmt == "csv":
            files = [source] if source.is_file() else sorted(source.glob("*.csv"))
            file_format = ds.CsvFileFormat(convert_options=pacsv.ConvertOptions(
                column_types=_csv_types(files)))
        dataset = ds.dataset(path, format=file_format)
        schema = dataset.schema
        rows = dataset.count_rows()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot read as {fmt}: {exc}") from None
    if rows == 0:
        raise InputError(f"{path}: no rows")
    columns = {f.name: f.type for f in schema}
    if label not in columns:
        raise InputError(f"label column {label!r} not in {path} (columns: {sorted(columns)})")
    if time_col is None and TIME in columns and label != TIME:
        time_col = TIME
    if time_col is not None and time_col not in columns:
        raise InputError(f"time column {time_col!r} not in {path}")
    time_type = columns.get(time_col)
    if time_type is not None and not (pa.types.is_integer(time_type)
                                      or pa.types.is_floating(time_type)
                                      or pa.types.is_timestamp(time_type)):
        raise InputError(f"time column {time_col!r} is {time_type}; "
                         "give epoch milliseconds or a timestamp")

    def numeric(t) -> bool:
        return _spark_type(t) in ("bigint", "double", "boolean")

    candidates = [c for c, t in columns.items() if numeric(t) and c not in (label, time_col)]
    if features is None:
        features = candidates
        if not features:
            raise InputError(f"{path}: no numeric feature columns besides label and time")
    else:
        absent = [c for c in features if c not in columns]
        if absent:
            raise InputError(f"feature columns not in {path}: {absent}")
        wrong = {c: str(columns[c]) for c in features if not numeric(columns[c])}
        if wrong:
            raise InputError(f"feature columns must be numeric: {wrong}")
        if {label, time_col} & set(features):
            raise InputError("the label and time columns cannot also be features")
    clashes = sorted(RESERVED & set(candidates))
    if clashes:
        raise InputError(f"feature names reserved by the job: {clashes}; rename them")

    values: set = set()
    for batch in dataset.to_batches(columns=[label]):
        values |= set(pc.unique(batch.column(0)).drop_null().to_pylist())
    if not values <= {0, 1}:  # True == 1 and False == 0: booleans pass
        shown = sorted(map(str, values))[:5]
        raise InputError(f"label {label!r} must be 0/1 or boolean, found values {shown}")
    if len(values) < 2:
        raise InputError(f"label {label!r} has a single class {sorted(values)}: "
                         "a model needs both")
    return FileInput(path, fmt, label, time_col,
                     time_type is not None and pa.types.is_timestamp(time_type), features,
                     candidates,
                     [(c, _spark_type(t)) for c, t in columns.items()] if fmt == "csv" else [])


# --- loading (Spark) ---------------------------------------------------------------------------

def load_file(spark, spec: FileInput):
    """The file's numeric columns (double, NaN as null), ``label`` (double) and event_time.

    Numeric columns beyond the features stay: the champion may need them to be scored on the
    same holdout (``models.promotion``).
    """
    from pyspark.sql import functions as F

    if spec.format == "csv":
        # The schema pyarrow saw, not Spark's inference: both readers agree on the types.
        ddl = ", ".join(f"`{name}` {kind}" for name, kind in spec.csv_schema)
        raw = spark.read.csv(spec.path, header=True, schema=ddl)
    else:
        raw = spark.read.parquet(spec.path)
    if spec.time_col is None:
        time = F.monotonically_increasing_id()  # increases with the file's row order
    elif spec.time_is_timestamp:
        time = F.unix_millis(F.col(spec.time_col))
    else:
        time = F.col(spec.time_col).cast("long")
    return raw.select(*[_as_double(name) for name in spec.numeric],
                      F.col(spec.label).cast("double").alias("label"),
                      time.cast("long").alias(TIME))


def _as_double(name: str):
    from pyspark.sql import functions as F

    value = F.col(f"`{name}`").cast("double")
    # NaN is a missing value like null: the gate counts both and the fill replaces both.
    return F.when(F.isnan(value), None).otherwise(value).alias(name)


def load_domain_source(spark, args: argparse.Namespace, features: list[str]):
    """Lake or bootstrap rows, typed like a file's: features double, label double, time long."""
    from pyspark.sql import functions as F

    from models import training_data

    df = training_data.load_training_set(spark, args.source, args.domain, args)
    return df.select(*[_as_double(name) for name in features],
                     F.col("label").cast("double"), F.col(TIME).cast("long"))


# --- the job ------------------------------------------------------------------------------------

def _hyperparameters(args: argparse.Namespace):
    from models.pipeline import Hyperparameters

    return Hyperparameters(
        algorithm=args.algorithm, max_depth=args.max_depth, max_bins=args.max_bins,
        min_instances_per_node=args.min_instances_per_node,
        subsampling_rate=args.subsampling_rate, seed=args.seed, max_iter=args.max_iter,
        step_size=args.step_size, num_trees=args.num_trees, class_weight=args.class_weight)


class DataRejected(Exception):
    """The data failed the gate or cannot be split; the reason is logged to MLflow."""


def _gate(df, args: argparse.Namespace, features: list[str], out: Path, run_id: str) -> None:
    """Great Expectations on the whole training set; the report is kept whatever the outcome."""
    import mlflow

    from models import validation

    started = time.monotonic()
    gate = validation.validate(df, "label", TIME, features, args.domain)
    (out / "validation").mkdir()
    (out / "validation" / "gx_report.json").write_text(json.dumps(gate.report, indent=1))
    mlflow.log_artifacts(str(out / "validation"), "validation")
    mlflow.log_params({f"gx_suite.{name}": v for name, v in gate.suite_versions.items()})
    mlflow.log_metric("gx_seconds", time.monotonic() - started)
    mlflow.set_tag("gate", "passed" if gate.success else "failed")
    if not gate.success:
        raise DataRejected(f"Great Expectations gate failed (report: MLflow run {run_id}, "
                           "validation/gx_report.json):\n  " + "\n  ".join(gate.failures))


def _split(filled, holdout_fraction: float):
    """(train, holdout): a time split that must leave both classes on both sides."""
    import mlflow

    from models.evaluation import time_split

    train_df, holdout, cutoff = time_split(filled, TIME, holdout_fraction)
    counts = {(side, int(r["label"])): r["count"]
              for side, part in (("train", train_df), ("holdout", holdout))
              for r in part.groupBy("label").count().collect()}
    for side in ("train", "holdout"):
        if not counts.get((side, 0)) or not counts.get((side, 1)):
            raise DataRejected(f"the time split at {cutoff} leaves the {side} set without both "
                               f"classes (counts {counts}); more data or another "
                               "--holdout-fraction")
    mlflow.log_params({"split_cutoff_time": cutoff})
    mlflow.log_metrics({f"{side}_rows_label_{label}": n for (side, label), n in counts.items()})
    return train_df, holdout


def _register(model, holdout, features: list[str], config: dict, version_tags: dict[str, str],
              model_name: str) -> str:
    """Log the model with signature and input example, register it, tag the version."""
    import mlflow
    import pyspark
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from models.pipeline import positive_probability

    example = positive_probability(model, holdout.limit(5)).toPandas()
    info = mlflow.spark.log_model(
        model, "model", registered_model_name=model_name,
        signature=infer_signature(example[features], example["prediction"]),
        input_example=example[features],
        # Listed, not inferred: inference costs ~35 s per model.
        pip_requirements=[f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"],
        metadata=config)
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return version


def _replay_evaluation(model, args: argparse.Namespace, out: Path):
    """The model in the world it is deployed in, offline (models.offline): its threshold set
    for incident-level precision on a calibration replay at the live anomaly rate, then rules
    and model run over the evaluation replay (the same for every version) and scored per
    detector. Returns (that replay, the promotion gate, the figures for MLflow)."""
    import dataclasses

    from models import offline, promotion
    from models.incidents import MODEL_DETECTOR
    from models.local_scorer import compile_model

    started = time.monotonic()
    model.save(str(out / "model"))
    scorer = compile_model(out / "model")
    calibration = offline.calibrate(
        args.domain, scorer, offline.live_replay(args.domain, args.live_anomaly_rate,
                                                 offline.REPLAY_SEED + 1),
        args.target_precision)
    scorer = dataclasses.replace(scorer, threshold_p1=calibration.threshold)
    replay = offline.live_replay(args.domain, args.live_anomaly_rate)
    evaluated = offline.evaluate(args.domain, scorer, replay)
    model_quality = evaluated.quality.get(MODEL_DETECTOR)
    figures = {"threshold_incident": calibration.threshold,
               "threshold_incident_met": float(calibration.target_met),
               "calibration_model_precision": calibration.precision,
               "calibration_model_recall": calibration.recall,
               "live_anomaly_rate": args.live_anomaly_rate,
               "replay_seconds": time.monotonic() - started, **evaluated.metrics()}
    if 0 < evaluated.labels.sum() < len(evaluated.labels):
        from models.evaluation import pr_auc

        figures["live_event_pr_auc"] = pr_auc(evaluated.scores, evaluated.labels)
    log.info("replay at the live rate: %s", {k: round(v, 4) for k, v in figures.items()})
    gate = promotion.ReplayGate(args.target_precision,
                                model_quality.precision if model_quality else None)
    return replay, gate, figures


def train(spark, args: argparse.Namespace, df, features: list[str],
          source_params: dict[str, str]) -> dict:
    """Gate, train, evaluate, log, register and (optionally) promote. Returns the summary."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from models import evaluation, pipeline, promotion
    from models.registry import THRESHOLD_TAG

    mlflow.set_tracking_uri(settings_mod.get().tracking_uri)
    mlflow.set_experiment(args.experiment)
    hp = _hyperparameters(args)
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")

    with mlflow.start_run(run_name=f"{args.model_name}-{hp.algorithm}") as run, \
            tempfile.TemporaryDirectory(prefix="pa-train-") as tmp:
        out = Path(tmp)
        mlflow.set_tags({"model_name": args.model_name, "source": args.source,
                         "domain": args.domain or ""})
        mlflow.log_params({**source_params, **hp.as_params(), "features": ",".join(features),
                           "holdout_fraction": args.holdout_fraction,
                           "target_precision": args.target_precision,
                           "missing_fill_value": args.fill_value})
        df = df.cache()
        _gate(df, args, features, out, run.info.run_id)

        filled, rows_missing, per_column = pipeline.fill_missing(df, features, args.fill_value)
        filled = filled.cache()
        df.unpersist()
        if rows_missing:
            log.warning("filled missing feature values with %s in %d rows: %s",
                        args.fill_value, rows_missing, per_column)
        mlflow.log_metrics({"rows_with_missing": rows_missing,
                            **{f"missing_cells.{c}": n for c, n in per_column.items()}})

        train_df, holdout = _split(filled, args.holdout_fraction)
        if hp.class_weight == "balanced":
            train_df, weights = pipeline.add_class_weights(train_df)
            mlflow.log_params({f"class_weight_{k}": round(v, 6) for k, v in weights.items()})
        started = time.monotonic()
        model = pipeline.build_pipeline(features, hp).fit(train_df)
        mlflow.log_metric("fit_seconds", time.monotonic() - started)

        held = pipeline.positive_probability(model, holdout).select("score", "label").toPandas()
        scores, labels = held["score"].to_numpy(), held["label"].to_numpy()
        # Per row on the holdout: the threshold of a file's model, and for a generated domain
        # the figure to compare with the live one (the bootstrap set is enriched ten-fold).
        choice = evaluation.choose_threshold(scores, labels, args.target_precision)
        replay, live_metrics = None, {}
        if args.source in ("lake", "bootstrap"):
            replay, gate, live_metrics = _replay_evaluation(model, args, out)
            live_metrics["enriched_threshold"] = choice.threshold
            choice = evaluation.ThresholdChoice(live_metrics["threshold_incident"],
                                                args.target_precision,
                                                bool(live_metrics["threshold_incident_met"]))
        if not choice.target_met:
            log.warning("no threshold reaches precision %s; took threshold %.4f",
                        args.target_precision, choice.threshold)
        # The enriched holdout's figures at the threshold in use, next to the live ones.
        metrics = {**evaluation.holdout_metrics(scores, labels, choice), **live_metrics}
        mlflow.log_metrics(metrics)

        importances = pipeline.feature_importances(model, features)
        evaluation.write_plots(scores, labels, choice.threshold, importances, out / "plots")
        mlflow.log_artifacts(str(out / "plots"), "plots")
        config = evaluation.scoring_config(choice, features, args.fill_value)
        mlflow.log_dict(config, "scoring.json")
        mlflow.log_dict(importances, "feature_importance.json")

        version = _register(model, holdout, features, config, {
            THRESHOLD_TAG: repr(choice.threshold), promotion.FILL_TAG: repr(args.fill_value),
            "target_precision": str(args.target_precision), "features": ",".join(features),
            "algorithm": hp.algorithm, "pr_auc": f"{metrics['pr_auc']:.6f}",
            "run_id": run.info.run_id}, args.model_name)
        summary = {"model_name": args.model_name, "version": version,
                   "run_id": run.info.run_id, **metrics}
        if args.promote:
            decision = promotion.promote(MlflowClient(), args.model_name, version,
                                         metrics[promotion.METRIC], holdout,
                                         (args.domain, replay, gate) if replay else None)
            summary.update(alias=decision.alias, promotion_reason=decision.reason,
                           champion_version=decision.champion_version,
                           champion_pr_auc=decision.champion_score)
        filled.unpersist()
        return summary


def _reachable(url: str) -> bool:
    from patternalarm.services import http_status

    return http_status(url, timeout_s=5.0) is not None


def main(argv: Sequence[str] | None = None) -> int:
    # The libraries' INFO chatter (GX above all) would bury the job's own lines.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    try:
        args = parse_args(argv)
        spec = (inspect_file(args.input, args.label, args.time_col, args.features)
                if args.source == "file" else None)
    except InputError as exc:
        print(f"train_model: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    tracking_uri = settings_mod.get().tracking_uri
    if tracking_uri.startswith("http") and not _reachable(f"{tracking_uri}/health"):
        # Found now, not after minutes of Spark work and MLflow's own retries.
        print(f"train_model: error: MLflow at {tracking_uri} does not answer "
              "(`patternalarm up`, or set PATTERNALARM_MLFLOW_TRACKING_URI)", file=sys.stderr)
        return 1

    from pyspark.sql import SparkSession

    from models.spark import get_spark

    # A caller's session (a test's, a notebook's) is reused and left running.
    owned = SparkSession.getActiveSession() is None
    spark = get_spark("patternalarm-train")
    try:
        codes = [_train_one(spark, run_args, spec) for run_args in _runs(args)]
    finally:
        if owned:
            spark.stop()
    return next((code for code in codes if code), 0)


def _runs(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One set of arguments per model: the same but for the domain and the model name."""
    if len(args.domains) <= 1:
        return [args]
    return [argparse.Namespace(**{**vars(args), "domain": d, "domains": [d],
                                  "model_name": f"patternalarm-{d}"}) for d in args.domains]


def _train_one(spark, args: argparse.Namespace, spec: FileInput | None) -> int:
    """Train one model and print its summary; returns its exit code."""
    try:
        if spec is not None:
            df, features = load_file(spark, spec), spec.features
            source_params = {"input": spec.path, "label_column": spec.label,
                             "time_column": spec.time_col or "(row order)"}
            # A timestamp column not named event_time would otherwise pass silently as a
            # feature: say what was chosen.
            log.info("features %s; time order from %s", features,
                     spec.time_col or "the file's row order (no --time-col)")
        else:
            from models.features import FEATURES

            features = args.features or list(FEATURES[args.domain])
            df = load_domain_source(spark, args, features)
            source_params = {"source": args.source, "domain": args.domain}
        summary = train(spark, args, df, features, source_params)
    except DataRejected as exc:
        print(f"train_model: data rejected: {exc}", file=sys.stderr)
        return _failed(args, EXIT_DATA_REJECTED, f"data rejected: {exc}")
    except Exception as exc:
        # Caught, not raised: the next domain of the same run still trains.
        log.exception("training %s failed", args.model_name)
        return _failed(args, 1, f"{type(exc).__name__}: {exc}")

    if args.json:
        print(json.dumps({"domain": args.domain, **summary}), flush=True)
    else:
        for key, value in summary.items():
            print(f"{key:<24} {value}", flush=True)
    return 0


def _failed(args: argparse.Namespace, code: int, reason: str) -> int:
    if args.json:
        # A caller following the output (`patternalarm demo`) learns that this model is done.
        print(json.dumps({"domain": args.domain, "model_name": args.model_name,
                          "exit_code": code, "error": reason}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
