"""Kafka as a PySpark 4 Python Data Source (`format("pa_kafka")`), over confluent-kafka.

Spark's own `kafka` format needs the spark-sql-kafka jar, which cannot be fetched here; this
source gives the same columns (key, value, topic, partition, offset, timestamp, timestampType)
so the job can use either (`kafka_stream`). Offsets are planned on the driver per partition per
micro-batch and kept in Spark's checkpoint: a restarted query replays exactly the ranges it had
planned, and an idempotent sink makes that exactly once. With `group.id`, Spark's commit of a
batch (made when it plans the next one) is also committed to the consumer group, so lag tools
see progress trailing by one micro-batch; correctness never depends on these commits.

Options:
  kafka.bootstrap.servers   required
  subscribe                 comma-separated topics
  startingOffsets           earliest (default) | latest | JSON {"topic": {"0": 42}}
  maxOffsetsPerTrigger      cap on records per micro-batch, shared across partitions
  group.id                  group whose committed offsets follow the query (optional)
  capFile                   JSON {"max_rows": N} the job rewrites after each batch: an adaptive
                            cap under maxOffsetsPerTrigger (see streaming.sinks.next_cap)
  statusFile                JSON the planner rewrites at each trigger: {"end_offsets": "ok",
                            "ends": <log ends>, "planned": <this batch's ends>} or
                            {"end_offsets": "unavailable", "error", "failures", "retry_in_s"};
                            the job takes each batch's lag from it and reports an outage
  decode                    JSON {"topic_domains": {topic: domain}, "buckets": N,
                            "max_future_skew_s": S}: the read tasks parse and validate each
                            record into the job's event rows (streaming.parse.SCHEMA) instead
                            of emitting Kafka's columns, so rows cross into the JVM once
  readTasks                 at most this many Spark tasks per micro-batch, each reading several
                            topic-partitions (default: one task per topic-partition). A Python
                            read task costs ~1 s of worker start-up on local[2] whatever its
                            size (measured), so the job asks for one per core.

The broker going away does not stop the query: while end offsets cannot be read, triggers plan
no new data, and the planner backs off (1 s doubling to 30 s) instead of probing on every
trigger. A partition whose log end went back below the query's offset was recreated (the
embedded memory broker restarts empty): the next batch reads the new log from its start, and
planned records the broker no longer has are skipped with a warning; that data is lost, as
with Spark's own source under failOnDataLoss=false.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)

SCHEMA = ("key binary, value binary, topic string, partition int, offset long, "
          "timestamp timestamp, timestampType int")
_READ_BATCH = 10_000
_STALL_TIMEOUT_S = 60.0
_GONE_CHECK_S = 5.0
_PROBE_BACKOFF_MAX_S = 30.0

log = logging.getLogger("patternalarm.kafka_source")

Offsets = dict[str, dict[str, int]]  # {"topic": {"partition": next offset to read}}


@dataclass(frozen=True)
class OffsetRange:
    servers: str
    topic: str
    partition: int
    start: int
    end: int  # exclusive


@dataclass(frozen=True)
class ReadTask(InputPartition):
    """The ranges one Spark task reads, one after the other."""
    ranges: tuple[OffsetRange, ...]


def group_ranges(ranges: list[OffsetRange], tasks: int) -> list[ReadTask]:
    """At most `tasks` read tasks, balanced by record count (largest range first, each to the
    least loaded task). Deterministic, so a replayed batch reads the same way."""
    if len(ranges) <= tasks:
        return [ReadTask((r,)) for r in ranges]
    bins: list[list[OffsetRange]] = [[] for _ in range(tasks)]
    loads = [0] * tasks
    for r in sorted(ranges, key=lambda r: (r.start - r.end, r.topic, r.partition)):
        least = loads.index(min(loads))
        bins[least].append(r)
        loads[least] += r.end - r.start
    return [ReadTask(tuple(b)) for b in bins if b]


class KafkaDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return "pa_kafka"

    def schema(self) -> str:
        if "decode" in self.options:
            from streaming.parse import SCHEMA as EVENTS

            return EVENTS
        return SCHEMA

    def streamReader(self, schema) -> KafkaStreamReader:
        return KafkaStreamReader(self.options)


def _flatten(offsets: Offsets) -> dict[tuple[str, int], int]:
    return {(t, int(p)): o for t, parts in offsets.items() for p, o in parts.items()}


def _nest(flat: dict[tuple[str, int], int]) -> Offsets:
    nested: Offsets = {}
    for (topic, partition), offset in sorted(flat.items()):
        nested.setdefault(topic, {})[str(partition)] = offset
    return nested


def read_from(start: int, end: int) -> int:
    """Where a range planned from `start` to `end` begins: an end below the start means the log
    was recreated, and all of it is new. Deterministic, so a replayed batch reads the same."""
    return 0 if end < start else start


def cap_offsets(start: dict[tuple[str, int], int], end: dict[tuple[str, int], int],
                max_rows: int) -> dict[tuple[str, int], int]:
    """Limit a micro-batch to `max_rows`, shared across partitions in proportion to backlog.

    Every partition with a backlog advances by at least one record, so none starves.
    """
    first = {tp: read_from(start.get(tp, 0), end[tp]) for tp in end}
    backlog = {tp: end[tp] - first[tp] for tp in end}
    total = sum(backlog.values())
    if total <= max_rows:
        return dict(end)
    capped = {}
    for tp, pending in backlog.items():
        share = max(1, pending * max_rows // total) if pending else 0
        capped[tp] = first[tp] + min(pending, share)
    return capped


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    def __init__(self, options: dict[str, str]):
        try:
            self.servers = options["kafka.bootstrap.servers"]
            self.topics = [t.strip() for t in options["subscribe"].split(",") if t.strip()]
        except KeyError as missing:
            raise ValueError(f"pa_kafka needs option {missing.args[0]!r}") from None
        self.starting = options.get("startingOffsets", "earliest")
        cap = options.get("maxOffsetsPerTrigger")
        self.max_rows = int(cap) if cap else None
        if self.max_rows is not None and self.max_rows <= 0:
            raise ValueError("maxOffsetsPerTrigger must be positive")
        self.group_id = options.get("group.id")
        self.read_tasks = int(options.get("readTasks", sys.maxsize))
        if self.read_tasks <= 0:
            raise ValueError("readTasks must be positive")
        self.cap_file = options.get("capFile")
        self.status_file = options.get("statusFile")
        self._known_ends: dict[tuple[str, int], int] | None = None
        self._available_now_target: dict[tuple[str, int], int] | None = None
        self.decode = json.loads(options["decode"]) if "decode" in options else None
        self._admin = None
        self._committer = None
        self._probe_failures = 0
        self._next_probe_at = 0.0

    # --- planning, on the driver ---------------------------------------------------------

    def _partitions(self) -> list[tuple[str, int]]:
        from confluent_kafka.admin import AdminClient

        if self._admin is None:  # one client for the planner's life, not one per trigger
            self._admin = AdminClient({"bootstrap.servers": self.servers})
        meta = self._admin.list_topics(timeout=10).topics
        missing = [t for t in self.topics if t not in meta or meta[t].error is not None]
        if missing:
            raise ValueError(f"pa_kafka: unknown topics {missing}")
        return [(t, p) for t in self.topics for p in sorted(meta[t].partitions)]

    def _end_offsets(self) -> dict[tuple[str, int], int]:
        """Current log ends; after the first call, fetched from the last known ends."""
        from confluent_kafka import TopicPartition

        from patternalarm.kafka import high_watermarks

        partitions = self._partitions()
        known = self._known_ends or {}
        probes = [TopicPartition(t, p, known.get((t, p), -1)) for t, p in partitions]
        self._known_ends = high_watermarks(self.servers, probes)
        return self._known_ends

    def initialOffset(self) -> Offsets:
        if self.starting == "earliest":
            return _nest({tp: 0 for tp in self._partitions()})
        if self.starting == "latest":
            return _nest(self._end_offsets())
        try:
            given = _flatten(json.loads(self.starting))
        except (ValueError, AttributeError):
            raise ValueError("startingOffsets must be earliest, latest or JSON "
                             '{"topic": {"0": 42}}') from None
        return _nest({tp: given.get(tp, 0) for tp in self._partitions()})

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._available_now_target = self._end_offsets()

    def latestOffset(self, start: Offsets, limit: ReadLimit) -> Offsets:
        begin = _flatten(start)
        if self._available_now_target is None and time.monotonic() < self._next_probe_at:
            return start  # backing off after a failed probe: no new data planned
        try:
            known = self._available_now_target or self._end_offsets()
        except Exception as exc:  # broker down, slow or topics gone: retry after a backoff
            self._probe_failed(exc)
            return start
        self._probe_failures = 0
        recreated = {tp: (begin[tp], end) for tp, end in known.items()
                     if end < begin.get(tp, 0)}
        if recreated:
            log.warning(json.dumps({"event": "log_recreated", "offsets_went_back": {
                f"{t}-{p}": f"{old}->{new}" for (t, p), (old, new) in recreated.items()}}))
        planned = known
        if isinstance(limit, ReadMaxRows):
            planned = cap_offsets(begin, known, min(limit.max_rows, self._adaptive_cap()))
        # The sink takes the batch's lag from here: no second probe of the broker per batch.
        self._write_status({"end_offsets": "ok", "ends": _nest(known),
                            "planned": _nest(planned)})
        return _nest(planned)

    def _probe_failed(self, exc: Exception) -> None:
        self._probe_failures += 1
        retry_in_s = min(_PROBE_BACKOFF_MAX_S, 2.0 ** (self._probe_failures - 1))
        self._next_probe_at = time.monotonic() + retry_in_s
        self._known_ends = None  # the log may be recreated: probe from scratch next time
        self._admin = None
        error = str(exc)[:300]
        log.warning(json.dumps({"event": "end_offsets_unavailable", "error": error,
                                "failures": self._probe_failures, "retry_in_s": retry_in_s}))
        self._write_status({"end_offsets": "unavailable", "error": error,
                            "failures": self._probe_failures, "retry_in_s": retry_in_s})

    def _write_status(self, state: dict) -> None:
        if not self.status_file:
            return
        try:
            tmp = f"{self.status_file}.tmp"
            with open(tmp, "w") as file:
                json.dump({**state, "at": int(time.time() * 1000)}, file)
            os.replace(tmp, self.status_file)
        except OSError as exc:  # a report, never a reason to stop planning
            log.warning(json.dumps({"event": "source_status_unwritable", "error": str(exc)}))

    def _adaptive_cap(self) -> int:
        if not self.cap_file:
            return sys.maxsize
        try:
            with open(self.cap_file) as file:
                return max(int(json.load(file)["max_rows"]), 1)
        except (OSError, ValueError, KeyError):
            return sys.maxsize  # no batch measured yet

    def reportLatestOffset(self) -> Offsets | None:
        return _nest(self._known_ends) if self._known_ends else None

    def partitions(self, start: Offsets, end: Offsets) -> list[ReadTask]:
        begin = _flatten(start)
        ranges = []
        for (t, p), stop in _flatten(end).items():
            first = read_from(begin.get((t, p), 0), stop)
            if stop > first:
                ranges.append(OffsetRange(self.servers, t, p, first, stop))
        return group_ranges(ranges, self.read_tasks)

    def commit(self, end: Offsets) -> None:
        if not self.group_id:
            return
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        if self._committer is None:  # one for the planner's life, not one per batch
            self._committer = Consumer({"bootstrap.servers": self.servers,
                                        "group.id": self.group_id, "enable.auto.commit": False})
        try:
            self._committer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in
                                            _flatten(end).items()], asynchronous=False)
        except KafkaException:
            self._committer.close()
            self._committer = None
            raise

    # --- reading, on the executors ---------------------------------------------------------

    def read(self, partition: ReadTask) -> Iterator:
        if self.decode is None:
            for offsets in partition.ranges:
                for records in _read_range(offsets):
                    yield _kafka_columns(offsets, records)
            return
        from streaming.parse import EventParser

        parser = EventParser(self.decode["topic_domains"], self.decode["buckets"],
                             self.decode["max_future_skew_s"])
        for offsets in partition.ranges:
            for _, values, positions, stamps, _ in _read_range(offsets):
                size = len(positions)
                yield parser.parse([offsets.topic] * size, [offsets.partition] * size,
                                   positions, stamps, values)


def _kafka_columns(partition: OffsetRange, records: tuple) -> object:
    """Records as a RecordBatch of SCHEMA (Kafka's own columns)."""
    import pyarrow as pa

    keys, values, offsets, stamps, kinds = records
    size = len(offsets)
    return pa.RecordBatch.from_arrays([
        pa.array(keys, pa.binary()), pa.array(values, pa.binary()),
        pa.array([partition.topic] * size, pa.string()),
        pa.array([partition.partition] * size, pa.int32()),
        pa.array(offsets, pa.int64()),
        # Kafka timestamps are epoch ms; Spark timestamps are µs.
        pa.array([ms * 1000 for ms in stamps], pa.timestamp("us", "UTC")),
        pa.array(kinds, pa.int32()),
    ], names=["key", "value", "topic", "partition", "offset", "timestamp", "timestampType"])


# Python workers outlive tasks (spark.python.worker.reuse): one consumer per worker and
# broker, reassigned for each range, instead of a new client (and connection) per range.
_READERS: dict[str, object] = {}


def _reader(servers: str):
    from confluent_kafka import Consumer

    from patternalarm.kafka import READ_FETCH_WAIT_MS

    if servers not in _READERS:
        # An offset the broker no longer has is an error here, not a silent jump to the end.
        _READERS[servers] = Consumer({
            "bootstrap.servers": servers, "group.id": "pa-source",
            "enable.auto.commit": False, "fetch.wait.max.ms": READ_FETCH_WAIT_MS,
            "auto.offset.reset": "error"})
    return _READERS[servers]


def _drop_reader(servers: str) -> None:
    reader = _READERS.pop(servers, None)
    if reader is not None:
        reader.close()


def _read_range(partition: OffsetRange) -> Iterator[tuple[list, list, list, list, list]]:
    """(keys, values, offsets, timestamps in ms, timestamp types) of a range, in chunks."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    reader = _reader(partition.servers)
    reader.assign([TopicPartition(partition.topic, partition.partition, partition.start)])
    position = partition.start
    last_progress = time.monotonic()
    try:
        while position < partition.end:
            stalled_s = time.monotonic() - last_progress
            if stalled_s > _GONE_CHECK_S and _log_end(partition, position) < partition.end:
                _skip_gone(partition, position, "the log end went back")
                return
            if stalled_s > _STALL_TIMEOUT_S:
                raise RuntimeError(
                    f"{partition.topic}[{partition.partition}] offsets {position}.."
                    f"{partition.end - 1} planned but unreadable for {_STALL_TIMEOUT_S}s")
            # Ask only for what the range still holds, so consume returns at once.
            wanted = min(_READ_BATCH, partition.end - position)
            keys, values, offsets, stamps, kinds = [], [], [], [], []
            for msg in reader.consume(wanted, 0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._AUTO_OFFSET_RESET:
                        _skip_gone(partition, position, str(msg.error()))
                        return
                    raise KafkaException(msg.error())
                if msg.offset() >= partition.end:
                    break
                if (msg.offset() < position or msg.partition() != partition.partition
                        or msg.topic() != partition.topic):
                    continue  # a fetch of the reader's previous assignment, still queued
                kind, stamp = msg.timestamp()
                keys.append(msg.key())
                values.append(msg.value())
                offsets.append(msg.offset())
                stamps.append(stamp)
                kinds.append(kind)
            if not offsets:
                continue
            position = offsets[-1] + 1
            last_progress = time.monotonic()
            yield keys, values, offsets, stamps, kinds
    except BaseException:
        _drop_reader(partition.servers)  # in an unknown state: the next range starts afresh
        raise


def _log_end(partition: OffsetRange, position: int) -> int:
    """The partition's high watermark from a Fetch (ListOffsets is short of the end on Tansu)."""
    from confluent_kafka import KafkaException, TopicPartition

    from patternalarm.kafka import high_watermarks

    key = (partition.topic, partition.partition)
    try:
        return high_watermarks(partition.servers, [TopicPartition(*key, position)])[key]
    except (KafkaException, TimeoutError):  # broker unreachable: nothing known gone, wait on
        return sys.maxsize


def _skip_gone(partition: OffsetRange, position: int, why: str) -> None:
    """Planned records the broker lost (a recreated log): counted in the log, not waited for."""
    log.warning(json.dumps({"event": "planned_records_gone", "topic": partition.topic,
                            "partition": partition.partition, "offsets": [position,
                            partition.end - 1], "skipped": partition.end - position,
                            "why": why[:200]}))


def kafka_stream(spark, servers: str, topics: list[str], *, native: bool = False,
                 starting_offsets: str = "earliest", max_offsets_per_trigger: int | None = None,
                 group_id: str | None = None, cap_file: str | None = None,
                 status_file: str | None = None, read_tasks: int | None = None,
                 decode: dict | None = None):
    """A streaming DataFrame over `topics` from this source or Spark's native `kafka` format.

    Both give Kafka's columns, or with `decode` (see the option) the job's parsed event rows:
    this source parses in its read tasks, the native one in a `mapInArrow` after it. The native
    format needs the spark-sql-kafka jar on the classpath (e.g. `--packages
    org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version>`) and keeps a fixed
    maxOffsetsPerTrigger (no adaptive cap).
    """
    options = {"kafka.bootstrap.servers": servers, "subscribe": ",".join(topics),
               "startingOffsets": starting_offsets}
    if group_id:
        options["kafka.group.id" if native else "group.id"] = group_id
    if max_offsets_per_trigger:
        options["maxOffsetsPerTrigger"] = str(max_offsets_per_trigger)
    if native:
        source = "kafka"
    else:
        spark.dataSource.register(KafkaDataSource)
        source = "pa_kafka"
        if cap_file:
            options["capFile"] = cap_file
        if status_file:
            options["statusFile"] = status_file
        if read_tasks:
            options["readTasks"] = str(read_tasks)
        if decode:
            options["decode"] = json.dumps(decode)
            return spark.readStream.format(source).options(**options).load()
    columns = [c.split()[0] for c in SCHEMA.split(", ")]
    raw = spark.readStream.format(source).options(**options).load().select(*columns)
    if not decode:
        return raw
    from functools import partial

    from streaming.parse import SCHEMA as EVENTS
    from streaming.parse import parse_kafka_batches

    return raw.mapInArrow(partial(parse_kafka_batches, **decode), EVENTS)
