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
from dataclasses import dataclass, field

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
    """The ranges one Spark task reads, all at once."""
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
            for chunk in _read_ranges(partition.ranges):
                yield _kafka_columns(chunk)
            return
        from streaming.parse import EventParser

        parser = EventParser(self.decode["topic_domains"], self.decode["buckets"],
                             self.decode["max_future_skew_s"])
        for chunk in _read_ranges(partition.ranges):
            yield parser.parse(chunk.topics, chunk.partitions, chunk.offsets, chunk.stamps,
                               chunk.values)


@dataclass
class _Chunk:
    """Records as read, one list per field, in the order they arrived."""
    topics: list = field(default_factory=list)
    partitions: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)
    offsets: list = field(default_factory=list)
    stamps: list = field(default_factory=list)  # epoch ms
    kinds: list = field(default_factory=list)  # timestamp types

    def add(self, msg) -> None:
        kind, stamp = msg.timestamp()
        self.topics.append(msg.topic())
        self.partitions.append(msg.partition())
        self.keys.append(msg.key())
        self.values.append(msg.value())
        self.offsets.append(msg.offset())
        self.stamps.append(stamp)
        self.kinds.append(kind)


def _kafka_columns(chunk: _Chunk) -> object:
    """Records as a RecordBatch of SCHEMA (Kafka's own columns)."""
    import pyarrow as pa

    return pa.RecordBatch.from_arrays([
        pa.array(chunk.keys, pa.binary()), pa.array(chunk.values, pa.binary()),
        pa.array(chunk.topics, pa.string()), pa.array(chunk.partitions, pa.int32()),
        pa.array(chunk.offsets, pa.int64()),
        # Kafka timestamps are epoch ms; Spark timestamps are µs.
        pa.array([ms * 1000 for ms in chunk.stamps], pa.timestamp("us", "UTC")),
        pa.array(chunk.kinds, pa.int32()),
    ], names=["key", "value", "topic", "partition", "offset", "timestamp", "timestampType"])


# Python workers outlive tasks (spark.python.worker.reuse): one consumer per worker and
# broker, reassigned for each task, instead of a new client (and connection) per task.
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


def _read_ranges(ranges: tuple[OffsetRange, ...]) -> Iterator[_Chunk]:
    """A task's ranges, in chunks, through one assignment of all their partitions.

    One assignment lets the consumer fetch every partition in the same requests. Taking the
    ranges one at a time cost a fetch wait per switch (librdkafka's one in-flight fetch, already
    past the previous range's end, had to return first): 6 ranges of 250 records took 0.75 s.
    A finished range's partition is not paused (that cost 1 s fetch back-offs, and once a
    60 s stall of a partition paused in an earlier task): its records past the end are dropped,
    and the assignment goes at the end, so nothing is prefetched between tasks.
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    servers = ranges[0].servers
    reader = _reader(servers)
    todo = {(r.topic, r.partition): r for r in ranges}
    position = {key: r.start for key, r in todo.items()}
    last_progress = dict.fromkeys(todo, time.monotonic())
    reader.assign([TopicPartition(r.topic, r.partition, r.start) for r in ranges])
    try:
        while todo:
            now = time.monotonic()
            for key, r in list(todo.items()):
                stalled_s = now - last_progress[key]
                if stalled_s > _GONE_CHECK_S and _log_end(r, position[key]) < r.end:
                    _skip_gone(r, position[key], "the log end went back")
                    del todo[key]
                elif stalled_s > _STALL_TIMEOUT_S:
                    raise RuntimeError(f"{r.topic}[{r.partition}] offsets {position[key]}.."
                                       f"{r.end - 1} planned but unreadable for "
                                       f"{_STALL_TIMEOUT_S}s")
            # Ask only for what the ranges still hold, so consume returns at once.
            wanted = min(_READ_BATCH, sum(r.end - position[k] for k, r in todo.items()))
            chunk = _Chunk()
            batch = reader.consume(wanted, 0.5) if todo else []
            read_at = time.monotonic()
            for msg in batch:
                key = (msg.topic(), msg.partition())
                r = todo.get(key)
                if msg.error():
                    if r is not None and msg.error().code() == KafkaError._AUTO_OFFSET_RESET:
                        _skip_gone(r, position[key], str(msg.error()))
                        del todo[key]
                        continue
                    raise KafkaException(msg.error())
                if r is None or msg.offset() < position[key]:
                    continue  # past a finished range, or a fetch of an earlier assignment
                if msg.offset() >= r.end:
                    del todo[key]
                    continue
                chunk.add(msg)
                position[key] = msg.offset() + 1
                last_progress[key] = read_at
                if position[key] == r.end:
                    del todo[key]
            if chunk.offsets:
                yield chunk
        reader.unassign()
    except BaseException:
        _drop_reader(servers)  # in an unknown state: the next task starts afresh
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
