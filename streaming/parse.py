"""Parse and validate Kafka records against their domain's contract (runs in mapInPandas).

A record either becomes a typed event row (the envelope plus the feature engines' inputs) or a
dead-letter row with the reason and the original bytes; nothing raises, so the job never dies
on input. The bucket groups entities for the stateful step: one state per bucket, not per
entity, because Python stateful operators pay a fixed cost per group and micro-batch.

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
from collections.abc import Iterator

import pandas as pd

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


def bucket_of(entity_id: str, buckets: int) -> int:
    return zlib.crc32(entity_id.encode()) % buckets


def parse_frames(frames: Iterator[pd.DataFrame], topic_domains: dict[str, str],
                 buckets: int, max_future_skew_s: int) -> Iterator[pd.DataFrame]:
    contracts = {topic: contract(domain) for topic, domain in topic_domains.items()}
    skew_ms = max_future_skew_s * 1000
    for frame in frames:
        # The Kafka timestamp is the producer's own (CreateTime) unless the topic uses
        # LogAppendTime, so it is held against this reader's clock too: a producer that lies
        # in both places is still caught.
        read_ms = int(time.time() * 1000)
        out = []
        for topic, partition, offset, stamp, raw in zip(
                frame["topic"], frame["partition"], frame["offset"], frame["timestamp"],
                frame["value"], strict=True):
            broker_ms = int(pd.Timestamp(stamp).value // 1_000_000)
            base = {"topic": topic, "partition": partition, "offset": offset,
                    "broker_time": broker_ms}
            try:
                event = contracts[topic].parse(raw)
                early = future_event_time(event["event_time"], min(broker_ms, read_ms), skew_ms)
                if early:
                    raise InvalidEvent(early)
            except InvalidEvent as bad:
                out.append(_dead(base, topic_domains[topic], str(bad), raw))
                continue
            except Exception as bug:  # noqa: BLE001 - one message must never stop the stream
                # The contract turns every bad input into InvalidEvent; reaching here is our
                # bug, and a crash would replay the same offset forever. Dead-letter it loudly.
                log.error(json.dumps({"event": "parse_bug", "topic": topic, "offset": offset,
                                      "error": repr(bug)[:300]}))
                out.append(_dead(base, topic_domains[topic], f"parser error: {bug!r}", raw))
                continue
            row = {**base, "domain": event["domain"], "entity_id": event["entity_id"],
                   "event_id": event["event_id"], "event_time": event["event_time"],
                   "bucket": bucket_of(event["entity_id"], buckets)}
            row.update(event["payload"])
            out.append(row)
        yield _frame(out)


def _dead(base: dict, domain: str, reason: str, raw: bytes | None) -> dict:
    """A dead letter rides through the stateful step in its own bucket, with no event time."""
    text = reason[:REASON_CHARS].encode("utf-8", "backslashreplace").decode()
    return {**base, "domain": domain, "bucket": DLQ_BUCKET, "reason": text,
            "raw": None if raw is None else raw[:DLQ_RAW_BYTES],
            "raw_length": None if raw is None else len(raw),
            "raw_sha256": None if raw is None else hashlib.sha256(raw).hexdigest()}


def conform(frame: pd.DataFrame, ddl: str) -> pd.DataFrame:
    """Columns in schema order; text, binary and array ones as objects with None for missing.

    A missing column comes back from reindex as all-NaN floats: pyarrow turns that into a
    ChunkedArray for a string type, and Spark tries to iterate a NaN for an array type. An
    object column of None converts cleanly.
    """
    fields = [f.split() for f in ddl.split(", ")]
    frame = frame.reindex(columns=[name for name, _ in fields])
    for name, kind in fields:
        nested = kind in ("string", "binary") or kind.startswith("array")
        if nested and frame[name].dtype != object:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = conform(pd.DataFrame(rows), SCHEMA)
    # Dead letters have no event_time: nullable integers here, a null timestamp in Spark.
    frame["event_time"] = frame["event_time"].astype("Int64")
    frame["event_ts"] = pd.to_datetime(frame["event_time"], unit="ms", utc=True)
    return frame
