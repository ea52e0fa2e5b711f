"""Kafka clients built one way for every layer, and end offsets that are right on any broker.

End offsets: the embedded Tansu broker answers ListOffsets(LATEST) with the base offset of the
last record batch + 1, which is short of the log end whenever that batch holds several records.
The high watermark in a Fetch response is right on Tansu and on real Kafka, so end offsets are
read from a fetch: a short-lived probe consumer starts at the ListOffsets answer (at most one
batch behind the end, so the fetch is small) and reports the watermark that fetch returned.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from patternalarm.settings import Settings

# How long a fetch may wait at the broker for data. Tansu's memory engine answers a fetch whose
# wait is shorter than its own scan of the partition with no data and no high watermark, so a
# short wait can starve a reader for good: with 12 partitions of 18-42K records in small batches
# (as a paced producer writes them) a 10 ms probe left 6 of 12 unanswered for 6 s, while
# 50-100 ms answered in 0.05-0.15 s on a quiet box (benchmarks/RESULTS.md, "End-offset probe").
# The probe waits 100 ms: where a partition has nothing new it pays the whole wait on every
# trigger, and a probe that still misses is retried after a backoff. A read that misses stalls
# its task (under a load average of 13 a 50 ms read of a 61K-record partition got nothing for
# 60 s and failed the query), but a long read wait is paid on every range a reader moves to:
# librdkafka keeps one fetch in flight per broker and prefetches past the range, so with
# 1,000 ms each range after a task's first took 1.0 s, with 100 ms 0.01-0.14 s (measured: a
# micro-batch's read stage was ~3 s of 12 ranges at 1,000 ms).
PROBE_FETCH_WAIT_MS = 100
READ_FETCH_WAIT_MS = 100

# Tansu's JoinGroup waits session.timeout.ms / 2 before answering: keep it short.
_CONSUMER_DEFAULTS = {"session.timeout.ms": 6000, "enable.auto.commit": False}


# librdkafka logs through Python logging: its chatter at info level stays out of CLI output.
_log = logging.getLogger("patternalarm.kafka")


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers, "logger": _log})


def producer(settings: Settings, **config: object) -> Producer:
    return Producer({"bootstrap.servers": settings.bootstrap_servers, "logger": _log, **config})


def consumer(settings: Settings, group_id: str, **config: object) -> Consumer:
    return Consumer({
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": group_id,
        **_CONSUMER_DEFAULTS,
        **config,
    })


_quiet = logging.getLogger("patternalarm.kafka.probe")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def broker_reachable(settings: Settings, timeout_s: float = 2.0) -> bool:
    # A health probe expects refusals while the broker starts: keep librdkafka's logs quiet.
    probe = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "logger": _quiet})
    try:
        probe.list_topics(timeout=timeout_s)
        return True
    except KafkaException:
        return False


def ensure_topics(settings: Settings, topics: Iterable[str], partitions: int) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Partition counts are fixed at creation (Tansu does not support CreatePartitions).
    """
    client = admin(settings)
    existing = set(client.list_topics(timeout=10).topics)
    wanted = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
    if not wanted:
        return []
    created = []
    for topic, future in client.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def partitions_of(settings: Settings, topics: Iterable[str]) -> list[TopicPartition]:
    meta = admin(settings).list_topics(timeout=10).topics
    tps = []
    for topic in topics:
        if topic not in meta or meta[topic].error is not None:
            raise KafkaException(f"unknown topic {topic!r}")
        tps.extend(TopicPartition(topic, p) for p in sorted(meta[topic].partitions))
    return tps


def end_offsets(settings: Settings, topics: Iterable[str],
                timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """Log end offset (high watermark) of every partition of `topics`."""
    return high_watermarks(settings.bootstrap_servers, partitions_of(settings, topics),
                           timeout_s=timeout_s)


def high_watermarks(servers: str, partitions: Iterable[TopicPartition],
                    timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """High watermark of each partition, read from a Fetch response.

    A partition's `offset` is where the probe fetches from: a known earlier end (cheap, and no
    ListOffsets, which costs O(partition size) on Tansu's memory engine), or a negative value to
    start from the ListOffsets answer (at most one record batch short of the end).
    """
    probe = Consumer({"bootstrap.servers": servers, **_CONSUMER_DEFAULTS,
                      "group.id": f"patternalarm-probe-{uuid.uuid4().hex[:8]}",
                      "enable.partition.eof": True, "fetch.wait.max.ms": PROBE_FETCH_WAIT_MS,
                      "fetch.queue.backoff.ms": 0, "logger": _log})
    try:
        starts = [TopicPartition(tp.topic, tp.partition,
                                 tp.offset if tp.offset >= 0 else
                                 probe.get_watermark_offsets(tp, timeout=timeout_s)[1])
                  for tp in partitions]
        probe.assign(starts)
        pending = {(tp.topic, tp.partition) for tp in starts}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fetch response for {sorted(pending)} in {timeout_s}s")
            # Any message or end-of-partition event means a fetch response with the watermark.
            for msg in probe.consume(10_000, 0.05):
                err = msg.error()
                if err is None or err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic(), msg.partition()))
                elif err.code() != KafkaError._AUTO_OFFSET_RESET:
                    # A start beyond the end (topic recreated) is reset and fetched again.
                    raise KafkaException(err)
        ends = {}
        for tp in starts:
            high = probe.get_watermark_offsets(tp, cached=True)[1]
            if high == OFFSET_INVALID:
                raise KafkaException(f"no high watermark for {tp.topic}[{tp.partition}]")
            ends[(tp.topic, tp.partition)] = high
        return ends
    finally:
        probe.close()


def consumer_lag(settings: Settings, group_id: str,
                 topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """Messages each partition's end is ahead of `group_id`'s committed offset."""
    ends = end_offsets(settings, list(topics))
    done = committed_offsets(settings, group_id, ends)
    return {tp: max(end - done.get(tp, 0), 0) for tp, end in ends.items()}


def committed_offsets(settings: Settings, group_id: str, partitions: Iterable[tuple[str, int]],
                      timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
    """`group_id`'s committed offset of each partition that has one."""
    reader = consumer(settings, group_id)
    try:
        committed = reader.committed([TopicPartition(t, p) for t, p in partitions],
                                     timeout=timeout_s)
    finally:
        reader.close()
    return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}
