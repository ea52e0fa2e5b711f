"""The pa_kafka Python Data Source on real Spark and the real broker."""

from __future__ import annotations

import uuid

import pytest

from patternalarm import kafka
from streaming.kafka_source import kafka_stream
from tests.conftest import produce_in_batches

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark(stack):
    from models.spark import get_spark

    return get_spark("test-kafka-source")


def run_available_now(spark, cfg, topic, out, checkpoint, group):
    query = (kafka_stream(spark, cfg.bootstrap_servers, [topic], max_offsets_per_trigger=500,
                          group_id=group)
             .selectExpr("topic", "partition", "offset", "CAST(value AS STRING) AS value",
                         "timestamp")
             .writeStream.format("parquet").option("path", str(out))
             .option("checkpointLocation", str(checkpoint))
             .trigger(availableNow=True).start())
    query.awaitTermination()
    assert query.exception() is None
    return [p["numInputRows"] for p in query.recentProgress if p["numInputRows"]]


def offsets_read(spark, out):
    rows = spark.read.parquet(str(out)).select("partition", "offset").collect()
    return sorted((r.partition, r.offset) for r in rows)


def test_every_offset_once_capped_per_trigger_and_resumed_from_checkpoint(spark, stack, tmp_path):
    topic = f"test.source.{uuid.uuid4().hex[:6]}"
    group = f"source-{uuid.uuid4().hex[:6]}"
    kafka.ensure_topics(stack, [topic], partitions=3)
    acked = produce_in_batches(stack, topic, 2_000)
    out, checkpoint = tmp_path / "out", tmp_path / "checkpoint"

    batches = run_available_now(spark, stack, topic, out, checkpoint, group)
    expected = sorted((p, o) for p, n in acked.items() for o in range(n))
    assert offsets_read(spark, out) == expected
    # The cap splits 2,000 records into batches of at most 500 (+1 per partition, no starving).
    assert len(batches) >= 4 and max(batches) <= 503 and sum(batches) == 2_000
    # Spark commits a batch's offsets to the source when it plans the next one, so the group
    # trails the query by exactly the last micro-batch.
    assert sum(kafka.consumer_lag(stack, group, [topic]).values()) == batches[-1]

    more = produce_in_batches(stack, topic, 300)
    run_available_now(spark, stack, topic, out, checkpoint, group)
    expected = sorted((p, o) for p in range(3) for o in range(acked.get(p, 0) + more.get(p, 0)))
    assert offsets_read(spark, out) == expected  # only the new 300, nothing twice


def test_columns_match_the_native_kafka_source(spark, stack):
    df = kafka_stream(spark, stack.bootstrap_servers, [stack.dlq_topic])
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("key", "binary"), ("value", "binary"), ("topic", "string"), ("partition", "int"),
        ("offset", "bigint"), ("timestamp", "timestamp"), ("timestampType", "int")]
