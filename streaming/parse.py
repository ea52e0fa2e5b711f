"""Parse and validate Kafka records against their domain's contract (runs in mapInPandas).

A record either becomes a typed event row (the envelope plus the feature engines' inputs) or a
dead-letter row with the reason and the original bytes; nothing raises, so the job never dies
on input. The bucket groups entities for the stateful step: one state per bucket, not per
entity, because Python stateful operators pay a fixed cost per group and micro-batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pandas as pd

from models.features import ENGINES
from patternalarm.domains import contract
from patternalarm.events import InvalidEvent

DLQ_BUCKET = -1
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
    *(f"{name} {kind}" for name, kind in INPUT_TYPES.items())])


def bucket_of(entity_id: str, buckets: int) -> int:
    return zlib.crc32(entity_id.encode()) % buckets


def parse_frames(frames: Iterator[pd.DataFrame], topic_domains: dict[str, str],
                 buckets: int) -> Iterator[pd.DataFrame]:
    contracts = {topic: contract(domain) for topic, domain in topic_domains.items()}
    for frame in frames:
        out = []
        for topic, partition, offset, stamp, raw in zip(
                frame["topic"], frame["partition"], frame["offset"], frame["timestamp"],
                frame["value"], strict=True):
            broker_ms = int(pd.Timestamp(stamp).value // 1_000_000)
            base = {"topic": topic, "partition": partition, "offset": offset,
                    "broker_time": broker_ms}
            try:
                if raw is None:
                    raise InvalidEvent("empty message (null value)")
                event = contracts[topic].parse(raw)
            except InvalidEvent as bad:
                out.append(_dead(base, topic_domains[topic], str(bad), raw))
                continue
            row = {**base, "domain": event["domain"], "entity_id": event["entity_id"],
                   "event_id": event["event_id"], "event_time": event["event_time"],
                   "bucket": bucket_of(event["entity_id"], buckets)}
            row.update(event["payload"])
            out.append(row)
        yield _frame(out)


def _dead(base: dict, domain: str, reason: str, raw: bytes | None) -> dict:
    # A dead letter rides through the stateful step in its own bucket, timed by the broker.
    return {**base, "domain": domain, "bucket": DLQ_BUCKET, "event_time": base["broker_time"],
            "reason": reason[:1000], "raw": raw}


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
    frame["event_ts"] = pd.to_datetime(frame["event_time"], unit="ms", utc=True)
    return frame
