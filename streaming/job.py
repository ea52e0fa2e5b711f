"""PatternAlarm's streaming detection job.

    spark-submit streaming/job.py [--domains payments,gaming,iot] [--available-now]

Kafka → parse/validate (dead letters aside) → event-time watermark → per-(domain, bucket)
state: shared features + pattern rules → foreachBatch: champion-model scoring, Parquet lake,
dead-letter topic, and incidents + metrics committed to Postgres exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence

from patternalarm import settings as settings_mod
from patternalarm.settings import DOMAINS, Settings

log = logging.getLogger("patternalarm.stream")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streaming/job.py", description=__doc__.split("\n")[1])
    parser.add_argument("--domains", default=",".join(DOMAINS),
                        help="comma-separated domains to watch (default: all)")
    parser.add_argument("--query-name", default="detector",
                        help="names the checkpoint and the batch ledger (default: detector)")
    parser.add_argument("--available-now", action="store_true",
                        help="process what is in the topics now, then stop (backfills, tests)")
    parser.add_argument("--starting-offsets", default="earliest", choices=("earliest", "latest"),
                        help="where a new query (no checkpoint yet) starts")
    args = parser.parse_args(argv)
    args.domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = sorted(set(args.domains) - set(DOMAINS))
    if unknown or not args.domains:
        parser.error(f"unknown domain(s) {unknown}; choose from {', '.join(DOMAINS)}")
    return args


def build_query(spark, cfg: Settings, args: argparse.Namespace):
    from pyspark.sql.streaming.state import GroupStateTimeout

    from streaming.detector import OUTPUT, STATE, Detector
    from streaming.kafka_source import kafka_stream
    from streaming.sinks import BatchSink, cap_path, consumer_group, source_status_path

    topics = {cfg.events_topic(d): d for d in args.domains}
    events = kafka_stream(spark, cfg.bootstrap_servers, list(topics),
                          native=cfg.stream_source == "native",
                          starting_offsets=args.starting_offsets,
                          max_offsets_per_trigger=cfg.stream_max_offsets_per_trigger,
                          group_id=consumer_group(args.query_name),
                          cap_file=str(cap_path(cfg, args.query_name)),
                          status_file=str(source_status_path(cfg, args.query_name)),
                          read_tasks=spark.sparkContext.defaultParallelism,
                          decode={"topic_domains": topics, "buckets": cfg.stream_buckets,
                                  "max_future_skew_s": cfg.stream_max_future_skew_s})
    detected = (events.withWatermark("event_ts", f"{cfg.stream_allowed_lateness_s} seconds")
                .groupBy("domain", "bucket")
                .applyInPandasWithState(Detector(cfg.stream_entity_idle_s), OUTPUT, STATE,
                                        "append", GroupStateTimeout.EventTimeTimeout))
    sink = BatchSink(spark, cfg, args.query_name, args.domains)
    writer = (detected.writeStream.queryName(args.query_name)
              .option("checkpointLocation", str(cfg.checkpoint_dir / args.query_name))
              .foreachBatch(sink))
    if args.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{cfg.stream_trigger_s} seconds")
    return writer.start(), sink


def _orphaned_ledger(cfg: Settings, query_name: str) -> bool:
    import contextlib

    from patternalarm import db

    if (cfg.checkpoint_dir / query_name / "offsets").exists():
        return False
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM stream_batches WHERE query_name = %s LIMIT 1", (query_name,))
        return cur.fetchone() is not None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("py4j", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = settings_mod.get()
    except settings_mod.SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if _orphaned_ledger(cfg, args.query_name):
        print(f"query {args.query_name!r}: the batch ledger in Postgres has batches but the "
              f"checkpoint {cfg.checkpoint_dir / args.query_name} is gone; batch ids would "
              "restart and be taken for replays. Use another --query-name, or "
              f"`patternalarm stream reset --query-name {args.query_name}`.", file=sys.stderr)
        return 2
    from models.features import warm_up
    from models.spark import get_spark

    # Compiled here once into numba's on-disk cache, the feature kernels load in each Python
    # worker in about a second instead of compiling there (10-30 s) during the first batch.
    warm_up()

    spark = get_spark("patternalarm-stream", ui=True)
    # One stateful task per core: each task is a Python worker's fixed cost per micro-batch,
    # and the buckets (the state groups) spread across them. Spark keeps the number a query
    # started with in its checkpoint and ignores a later change.
    spark.conf.set("spark.sql.shuffle.partitions", str(
        cfg.stream_shuffle_partitions or spark.sparkContext.defaultParallelism))
    spark.conf.set("spark.sql.streaming.stateStore.providerClass",
                   "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
    # A commit writes the batch's changes, not a snapshot of the store (zipped and synced at
    # every batch, 0.2-0.4 s of each stateful task); snapshots are made in the background.
    spark.conf.set("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled",
                   "true")
    query, sink = build_query(spark, cfg, args)
    spark.streams.addListener(sink.progress_listener())

    def shutdown(signum, frame):
        # query.stop() abandons the running micro-batch; the checkpoint and the batch ledger
        # stay consistent, and a restart replays that batch exactly once.
        log.info(json.dumps({"event": "stopping", "signal": signum}))
        query.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log.info(json.dumps({"event": "started", "query": args.query_name, "domains": args.domains,
                         "source": cfg.stream_source, "scorer": cfg.stream_scorer,
                         "spark_ui": spark.sparkContext.uiWebUrl}))
    with contextlib.suppress(Exception):
        query.awaitTermination()
    failure = query.exception()
    sink.close()
    spark.stop()
    if failure is not None:
        log.error(json.dumps({"event": "failed", "error": str(failure)[:2000]}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

