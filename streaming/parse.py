"""Parse and validate Kafka records against their domain's contract, into the job's rows.

The source runs this inside its read tasks (`streaming.kafka_source`, option `decode`), so a
record crosses from Python to the JVM once, already typed; Spark's native Kafka source feeds
the same function through `mapInArrow`. A record either becomes a typed event row (the
envelope plus the feature engines' inputs) or a dead-letter row with the reason and the
original bytes; nothing raises, so the job never dies on input. The bucket groups entities for
the stateful step: one state per bucket, not per entity, because Python stateful operators pay
a fixed cost per group and micro-batch.

Dead letters carry no event time (null `event_ts`): a null neither raises Spark's watermark
(its max) nor is dropped as late, so a dead letter is never lost in a catch-up and never
moves the watermark for everyone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from collections.abc import Iterator, Sequence

import pyarrow as pa

from models.features import ENGINES
from patternalarm.domains import contract
from patternalarm.events import MAX_MESSAGE_BYTES, InvalidEvent, future_event_time

DLQ_BUCKET = -1
# The original bytes a dead letter keeps; with base64 and the envelope the record stays far
# under the producer's 1 MB message limit whatever the broker accepted. Length and SHA-256 of
# the whole message are kept beside them.
DLQ_RAW_BYTES = MAX_MESSAGE_BYTES
REASON_CHARS = 1000

log = logging.getLogger("patternalarm.stream")
# Every engine input, typed, in one wide row: parse once, no JSON in the stateful step.
INPUT_TYPES = {"amount": "double", "country": "string", "merchant_id": "string",
               "lat": "double", "lon": "double", "channel": "string", "action": "string",
               "speed": "double", "reaction_ms": "double", "hit": "boolean",
               "headshot": "boolean", "resource_gain": "double", "value": "double",
               "battery_pct": "double"}
assert {i for e in ENGINES.values() for i in e.inputs} == set(INPUT_TYPES)

SCHEMA = ", ".join([
    "domain string", "bucket int", "entity_id string", "event_id string",
    "event_time long", "event_ts timestamp", "broker_time long",
    "topic string", "partition int", "offset long", "reason string", "raw binary",
    "raw_length long", "raw_sha256 string",
    *(f"{name} {kind}" for name, kind in INPUT_TYPES.items())])
_ARROW_TYPES = {"string": pa.string(), "int": pa.int32(), "long": pa.int64(),
                "double": pa.float64(), "boolean": pa.bool_(), "binary": pa.binary(),
                "timestamp": pa.timestamp("us", "UTC")}
ARROW_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind])
                          for name, kind in (f.split() for f in SCHEMA.split(", "))])
_ENVELOPE = ("domain", "entity_id", "event_id", "event_time")


def bucket_of(entity_id: str, buckets: int) -> int:
    return zlib.crc32(entity_id.encode()) % buckets


class EventParser:
    """Turns Kafka records into a RecordBatch of ARROW_SCHEMA: event rows, then dead letters."""

    def __init__(self, topic_domains: dict[str, str], buckets: int, max_future_skew_s: int):
        self.domains = topic_domains
        self.contracts = {topic: contract(domain) for topic, domain in topic_domains.items()}
        self.buckets = buckets
        self.skew_ms = max_future_skew_s * 1000

    def parse(self, topics: Sequence[str], partitions: Sequence[int], offsets: Sequence[int],
              broker_ms: Sequence[int], values: Sequence[bytes | None]) -> pa.RecordBatch:
        # The Kafka timestamp is the producer's own (CreateTime) unless the topic uses
        # LogAppendTime, so it is held against this reader's clock too: a producer that lies
        # in both places is still caught.
        read_ms = int(time.time() * 1000)
        columns: dict[str, list] = {name: [] for name in ARROW_SCHEMA.names}
        inputs = [(name, columns[name]) for name in INPUT_TYPES]
        envelope = [(name, columns[name]) for name in _ENVELOPE]
        dead: list[tuple[int, str]] = []
        for row, (topic, offset, stamp, raw) in enumerate(zip(topics, offsets, broker_ms, values,
                                                              strict=True)):
            try:
                event = self.contracts[topic].parse(raw)
                early = future_event_time(event["event_time"], min(stamp, read_ms),
                                          self.skew_ms)
                if early:
                    raise InvalidEvent(early)
            except InvalidEvent as bad:
                dead.append((row, str(bad)))
                continue
            except Exception as bug:  # noqa: BLE001 - one message must never stop the stream
                # The contract turns every bad input into InvalidEvent; reaching here is our
                # bug, and a crash would replay the same offset forever. Dead-letter it loudly.
                log.error(json.dumps({"event": "parse_bug", "topic": topic, "offset": offset,
                                      "error": repr(bug)[:300]}))
                dead.append((row, f"parser error: {bug!r}"))
                continue
            for name, column in envelope:
                column.append(event[name])
            payload = event["payload"]
            for name, column in inputs:
                column.append(payload.get(name))
            columns["bucket"].append(bucket_of(event["entity_id"], self.buckets))
            for name, source in (("topic", topic), ("partition", partitions[row]),
                                 ("offset", offset), ("broker_time", stamp)):
                columns[name].append(source)
        valid = len(columns["offset"])
        for row, reason in dead:
            raw = values[row]
            for name, value in (
                    ("domain", self.domains[topics[row]]), ("bucket", DLQ_BUCKET),
                    ("topic", topics[row]), ("partition", partitions[row]),
                    ("offset", offsets[row]), ("broker_time", broker_ms[row]),
                    ("reason", reason[:REASON_CHARS].encode("utf-8", "backslashreplace")
                     .decode()),
                    ("raw", None if raw is None else raw[:DLQ_RAW_BYTES]),
                    ("raw_length", None if raw is None else len(raw)),
                    ("raw_sha256", None if raw is None else hashlib.sha256(raw).hexdigest())):
                columns[name].append(value)
        for name in ("entity_id", "event_id", "event_time", *INPUT_TYPES):
            columns[name] += [None] * len(dead)
        for name in ("reason", "raw", "raw_length", "raw_sha256"):
            columns[name] = [None] * valid + columns[name]
        columns["event_ts"] = [None if t is None else t * 1000 for t in columns["event_time"]]
        return pa.RecordBatch.from_arrays(
            [pa.array(columns[f.name], f.type) for f in ARROW_SCHEMA], schema=ARROW_SCHEMA)


def parse_kafka_batches(batches: Iterator[pa.RecordBatch], topic_domains: dict[str, str],
                        buckets: int, max_future_skew_s: int) -> Iterator[pa.RecordBatch]:
    """mapInArrow over the columns of Spark's native Kafka source."""
    parser = EventParser(topic_domains, buckets, max_future_skew_s)
    for batch in batches:
        # Kafka timestamps are epoch ms in the records and µs in Spark.
        stamps = batch.column("timestamp").cast(pa.int64()).to_numpy() // 1000
        yield parser.parse(batch.column("topic").to_pylist(),
                           batch.column("partition").to_pylist(),
                           batch.column("offset").to_pylist(), stamps.tolist(),
                           batch.column("value").to_pylist())
