"""Training sets from the stream's lake or from a bootstrap run, through the shared features.

Both return a Spark DataFrame with the domain's feature columns (models.features.FEATURES, in
order), ``label`` (0/1) and ``event_time`` (epoch ms), the shape spark_jobs/train_model.py
trains on:

- ``lake``: feature rows the streaming job logged (one Parquet file set per micro-batch), with
  label 1 for events that a ground-truth episode lists. Features are exactly those served.
- ``bootstrap``: the generator's events for a fresh system, produced in process (no broker)
  and folded through the same feature engines, labelled by the episodes that made them.
"""

from __future__ import annotations

import contextlib
import json
from argparse import Namespace

import pandas as pd

from models.features import FEATURES, compute
from patternalarm import db
from patternalarm import settings as settings_mod

# A bootstrap run: an hour of event time, ~1 event per entity per minute, plenty of episodes.
BOOTSTRAP_MINUTES = 60
BOOTSTRAP_ENTITIES = 500
BOOTSTRAP_ANOMALY_RATE = 0.01
_T0_MS = 1_700_000_000_000


def load_training_set(spark, source: str, domain: str, args: Namespace):
    if source == "bootstrap":
        return bootstrap_dataframe(spark, domain, args.seed)
    if source == "lake":
        return lake_frame(spark, domain)
    raise ValueError(f"unknown training source {source!r}")


def bootstrap_frame(domain: str, seed: int, minutes: int = BOOTSTRAP_MINUTES,
                    entities: int = BOOTSTRAP_ENTITIES) -> pd.DataFrame:
    from patternalarm.generator import DomainStream, RateProfile, StreamSpec

    count = minutes * entities
    stream = DomainStream(StreamSpec(domain, seed, f"bootstrap-{seed}", _T0_MS, entities,
                                     BOOTSTRAP_ANOMALY_RATE),
                          RateProfile.build(entities, count=count))
    rows, anomalous = [], set()
    for _ in range(count):
        _, value, episode, _ = next(stream)
        event = json.loads(value)
        rows.append({**event.pop("payload"), **event})
        if episode is not None:
            anomalous.add(event["event_id"])
    events = pd.DataFrame(rows)
    features = compute(domain, events)
    features["label"] = features["event_id"].isin(anomalous).astype("int32")
    return features[[*FEATURES[domain], "label", "event_time"]]


def bootstrap_dataframe(spark, domain: str, seed: int):
    """``bootstrap_frame`` as a Spark DataFrame, partitioned as ``createDataFrame`` would.

    Not ``spark.createDataFrame(frame)``: a DataFrame made from a local object carries its
    rows inside every task that reads it, even from cache (2.4 MB for an hour of a domain,
    sent with each of the hundreds of tasks a fit runs). Broadcast, the frame travels once.
    The partitions are createDataFrame's contiguous slices, so the models are the same.
    """
    frame = bootstrap_frame(domain, seed)
    shared = spark.sparkContext.broadcast(frame)
    # The closure below is shipped with every task: it must not hold the frame itself.
    rows, parts = len(frame), spark.sparkContext.defaultParallelism
    doubles = {name: "float64" for name in FEATURES[domain]}
    schema = ", ".join([*(f"`{name}` double" for name in doubles), "label int", "event_time long"])

    def part(ids):
        for batch in ids:
            for i in batch["id"]:
                yield shared.value.iloc[i * rows // parts:(i + 1) * rows // parts].astype(doubles)

    return spark.range(parts, numPartitions=parts).mapInPandas(part, schema)


def lake_frame(spark, domain: str):
    from pyspark.sql import functions as F

    cfg = settings_mod.get()
    logged = (spark.read.parquet(str(cfg.lake_dir / "features"))
              .where(F.col("domain") == domain)
              # A replayed batch id rewrote its own directory; one event is in one batch.
              .dropDuplicates(["event_id"]))
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT unnest(event_ids) FROM ground_truth WHERE domain = %s",
                    (domain,))
        positives = [r[0] for r in cur.fetchall()]
    labelled = spark.createDataFrame([(e,) for e in positives], "event_id string")
    names = FEATURES[domain]
    return (logged.join(labelled.withColumn("label", F.lit(1)), "event_id", "left")
            .select(*[F.col("features")[i].alias(n) for i, n in enumerate(names)],
                    F.coalesce("label", F.lit(0)).cast("int").alias("label"), "event_time"))
