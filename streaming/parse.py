"""Parse and validate Kafka records against their domain's contract, into the job's rows.

The source runs this inside its read tasks (`streaming.kafka_source`, option `decode`), so a
record crosses from Python to the JVM once, already typed; Spark's native Kafka source feeds
the same function through `mapInArrow`. A record either becomes a typed event row (the
envelope plus the feature engines' inputs) or a dead-letter row with the reason and the
original bytes; nothing raises, so the job never dies on input. Well-formed messages are read
a block at a time by Arrow (~6 µs an event, against ~30 µs for the contract's per-message
parse); the rest take the per-message path, which names the reason. The bucket groups entities for
the stateful step: one state per bucket, not per entity, because Python stateful operators pay
a fixed cost per group and micro-batch.

Dead letters carry no event time (null `event_ts`): a null neither raises Spark's watermark
(its max) nor is dropped as late, so a dead letter is never lost in a catch-up and never
moves the watermark for everyone.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from models.features import ENGINES
from patternalarm.domains import contract
from patternalarm.events import (
    ENVELOPE,
    INT_RANGE,
    MAX_MESSAGE_BYTES,
    Contract,
    Field,
    InvalidEvent,
    future_event_time,
)

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


# What the columnar path leaves to the contract's own, one message at a time: anything not
# ASCII (Arrow's JSON reader lets invalid UTF-8 through into its strings), escapes and
# control characters (how JSON strings decode: NUL, lone surrogates), arrays and more than the
# envelope's and payload's two objects (nesting, the free-form attributes map, which has no
# Arrow JSON type). Generated and well-behaved producers' events have none of them.
_PER_MESSAGE_BYTES = bytes(range(0x20)) + b"\\["
# An "int" field is read as int64, so that a value beyond int32 is refused by its rule (and
# named by the contract) instead of failing the whole block.
_JSON_TYPES = {**_ARROW_TYPES, "int": pa.int64()}
# A block of messages that fails to read as a whole is halved until the bad ones are found;
# below this size, its messages take the per-message path.
_SMALLEST_BLOCK = 16


class EventParser:
    """Turns Kafka records into a RecordBatch of ARROW_SCHEMA: event rows, then dead letters.

    Most messages are read and validated column by column: joined into one JSON-lines block,
    read by Arrow with the contract's schema, and held to every field's rule with Arrow
    compute. A message that block reading or any rule refuses takes the contract's own parse,
    which names the reason; `tests/unit/test_parse.py` holds the two paths to one verdict.
    """

    def __init__(self, topic_domains: dict[str, str], buckets: int, max_future_skew_s: int):
        self.domains = topic_domains
        self.contracts = {topic: contract(domain) for topic, domain in topic_domains.items()}
        self.readers = {domain: _BlockReader(contract(domain))
                        for domain in set(topic_domains.values())}
        self.buckets = buckets
        self.skew_ms = max_future_skew_s * 1000

    def parse(self, topics: Sequence[str], partitions: Sequence[int], offsets: Sequence[int],
              broker_ms: Sequence[int], values: Sequence[bytes | None]) -> pa.RecordBatch:
        # The Kafka timestamp is the producer's own (CreateTime) unless the topic uses
        # LogAppendTime, so it is held against this reader's clock too: a producer that lies
        # in both places is still caught.
        read_ms = int(time.time() * 1000)
        envelope = {"topic": pa.array(topics, pa.string()),
                    "partition": pa.array(partitions, pa.int32()),
                    "offset": pa.array(offsets, pa.int64()),
                    "broker_time": pa.array(broker_ms, pa.int64())}
        latest_ms = pc.add(pc.min_element_wise(envelope["broker_time"], read_ms), self.skew_ms)
        events, left = [], []
        for topic in dict.fromkeys(topics):
            rows = [i for i, t in enumerate(topics) if t == topic]
            try:
                found, refused = self._columnar(topic, rows, values, latest_ms, envelope)
            except Exception as bug:  # noqa: BLE001 - the per-message path judges them all
                log.error(json.dumps({"event": "parse_bug", "topic": topic,
                                      "error": repr(bug)[:300]}))
                found, refused = [], rows
            events += found
            left += refused
        return pa.concat_batches([*events, self._each(sorted(left), topics, partitions, offsets,
                                                      broker_ms, values, read_ms)])

    def _columnar(self, topic: str, rows: list[int], values: Sequence[bytes | None],
                  latest_ms: pa.Array, envelope: dict
                  ) -> tuple[list[pa.RecordBatch], list[int]]:
        """Event rows of the messages the columnar path accepts, and the rows it leaves.
        `latest_ms`: per record, the latest event time it may carry (future_event_time)."""
        reader = self.readers[self.domains[topic]]
        clean = [i for i in rows if _well_formed(values[i])]
        events, left = [], sorted(set(rows) - set(clean))
        for block, table in reader.read(values, clean):
            if table is None:
                left += block
                continue
            at = pa.array(block)
            refused = pc.or_(reader.refused(table), pc.greater(
                table["event_time"], pc.take(latest_ms, at))).fill_null(True).to_numpy()
            good = np.flatnonzero(~refused)
            left += [block[i] for i in np.flatnonzero(refused)]
            if len(good):
                events.append(self._event_rows(table.take(good), pc.take(at, good), envelope,
                                               reader.domain))
        return events, left

    def _event_rows(self, table: pa.Table, rows: pa.Array, envelope: dict, domain: str
                    ) -> pa.RecordBatch:
        payload = table["payload"].combine_chunks()
        entity_ids = table["entity_id"].combine_chunks()
        size = len(table)
        columns = {
            "domain": pa.array([domain] * size, pa.string()),
            "bucket": pa.array([bucket_of(e, self.buckets) for e in entity_ids.to_pylist()],
                               pa.int32()),
            "entity_id": entity_ids, "event_id": table["event_id"].combine_chunks(),
            "event_time": table["event_time"].combine_chunks(),
            **{name: pc.take(column, rows) for name, column in envelope.items()},
        }
        columns["event_ts"] = pc.multiply(columns["event_time"], 1000).cast(
            ARROW_SCHEMA.field("event_ts").type)
        fields = {f.name for f in payload.type}
        for name in INPUT_TYPES:
            if name in fields:
                columns[name] = payload.field(name).cast(ARROW_SCHEMA.field(name).type)
        return pa.RecordBatch.from_arrays(
            [columns.get(f.name, pa.nulls(size, f.type)) for f in ARROW_SCHEMA],
            schema=ARROW_SCHEMA)

    def _each(self, rows: list[int], topics: Sequence[str], partitions: Sequence[int],
              offsets: Sequence[int], broker_ms: Sequence[int],
              values: Sequence[bytes | None], read_ms: int) -> pa.RecordBatch:
        """The contract's own parse of each of `rows`: event rows, then dead letters."""
        columns: dict[str, list] = {name: [] for name in ARROW_SCHEMA.names}
        inputs = [(name, columns[name]) for name in INPUT_TYPES]
        envelope = [(name, columns[name]) for name in _ENVELOPE]
        dead: list[tuple[int, str]] = []
        for row in rows:
            topic, offset, stamp, raw = topics[row], offsets[row], broker_ms[row], values[row]
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


def _well_formed(raw: bytes | None) -> bool:
    # Only what starts and ends as an object: Arrow's JSON reader crashes the process on a
    # block whose first value is `null` (pyarrow 25.0.1). translate() deletes at C speed, ~1 µs a
    # message, a fifth of a regular expression's cost.
    return (raw is not None and len(raw) <= MAX_MESSAGE_BYTES and raw[:1] == b"{"
            and raw[-1:] == b"}" and raw.isascii() and raw.count(b"{") <= 2
            and b'"attributes"' not in raw
            and len(raw.translate(None, _PER_MESSAGE_BYTES)) == len(raw))


class _BlockReader:
    """One domain's messages read as JSON lines with the contract's schema, and its rules."""

    def __init__(self, of: Contract):
        self.domain = of.domain
        self.contract = of
        self.options = pa_json.ParseOptions(
            explicit_schema=pa.schema(
                [(f.name, _JSON_TYPES[f.type]) for f in ENVELOPE]
                + [("payload", pa.struct([(f.name, _JSON_TYPES[f.type]) for f in of.payload]))]),
            unexpected_field_behavior="error")
        self.read_options = pa_json.ReadOptions(use_threads=False)

    def read(self, values: Sequence[bytes | None], rows: list[int]
             ) -> Iterator[tuple[list[int], pa.Table | None]]:
        """(rows, their table, one row per message) for blocks of `rows` that read whole;
        (rows, None) for the small blocks left that do not."""
        if not rows:
            return
        try:
            table = pa_json.read_json(io.BytesIO(b"\n".join(values[i] for i in rows)),
                                      read_options=self.read_options,
                                      parse_options=self.options)
            if table.num_rows == len(rows):  # an empty line is no row, `{}{}` is two
                yield rows, table
                return
        except (pa.ArrowException, ValueError):  # invalid JSON, a type the schema refuses
            pass
        if len(rows) > _SMALLEST_BLOCK:
            half = len(rows) // 2
            yield from self.read(values, rows[:half])
            yield from self.read(values, rows[half:])
        else:
            yield rows, None

    def refused(self, table: pa.Table) -> pa.Array:
        """Per row: whether any rule of the contract refuses it (the contract names which)."""
        refused = pc.not_equal(table["domain"], self.domain)
        payload = table["payload"]
        refused = pc.or_(refused, payload.is_null())
        for f in ENVELOPE:
            refused = pc.or_(refused, _breaks(f, table[f.name]))
        for f in self.contract.payload:
            refused = pc.or_(refused, _breaks(f, pc.struct_field(payload, f.name)))
        return refused.combine_chunks()


def _breaks(rule: Field, column) -> pa.Array:
    """Where `column` breaks `rule` (Field.problems, column by column)."""
    checks = []
    if rule.type == "string":
        checks.append(pc.equal(pc.utf8_length(column), 0))
    if rule.type == "int":
        low, high = INT_RANGE["int"]
        checks += [pc.less(column, low), pc.greater(column, high)]
    if rule.type == "double":
        checks.append(pc.invert(pc.is_finite(column)))
    if rule.min is not None:
        checks.append(pc.less(column, rule.min))
    if rule.max is not None:
        checks.append(pc.greater(column, rule.max))
    if rule.choices is not None:
        checks.append(pc.invert(pc.is_in(column, value_set=pa.array(rule.choices))))
    if rule.max_len is not None:
        checks.append(pc.greater(pc.utf8_length(column), rule.max_len))
    refused = pc.and_(column.is_null(), pa.scalar(rule.required))
    present = column.is_valid()
    for check in checks:
        refused = pc.or_(refused, pc.and_(present, check).fill_null(False))
    return refused


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
