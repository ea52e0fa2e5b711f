"""The stateful step: per-entity feature state and pattern rules, grouped by (domain, bucket).

`applyInPandasWithState` hands each (domain, bucket) group its rows as whole DataFrames, with
the bucket's state (the states of all entities hashed to it, one value) passed inline in the
same Arrow stream. Measured against `transformWithStateInPandas` on the same backlog (see
benchmarks/RESULTS.md): that operator turns every input row into a Python tuple
(`itertuples`) before regrouping, and reads and writes state over a second socket per group.

Events are folded in (entity, event time, Kafka offset) order, so a replay rebuilds the same
state; the rules run on the resulting feature rows. An entity idle for
`stream_entity_idle_s` of event time is dropped from its bucket, so state tracks what is live.
Silence (an entity whose events stopped) is checked every `_ABSENCE_CHECK_MS` of event time:
in a batch that brings the bucket rows, or by the group's event-time timeout when none come.
The output is one wide row type: features of every event (for scoring and the lake), rule
incidents, and dead letters passing through.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql.streaming.state import GroupState

from models.features import ENGINES, State, fold, new_state
from models.rules import ABSENCE_AFTER_S, Rule, absence_rule, hits, window_start
from streaming.parse import DLQ_BUCKET

OUTPUT = ", ".join([
    "kind string", "domain string", "entity_id string", "event_id string", "event_time long",
    "broker_time long", "topic string", "partition int", "offset long", "detector string",
    "severity string", "window_start long", "evidence string", "features array<double>",
    "reason string", "raw binary", "raw_length long", "raw_sha256 string"])
STATE = "blob binary"
# (name, held as Python objects): text, binary and array columns go to Arrow as objects with
# None for missing; a missing number as NaN, which Arrow takes as null.
_FIELDS = [(name, kind in ("string", "binary") or kind.startswith("array"))
           for name, kind in (f.split() for f in OUTPUT.split(", "))]
# How often a bucket re-checks its entities for silence, in event time.
_ABSENCE_CHECK_MS = 15_000
_EVENT_COLUMNS = ["domain", "entity_id", "event_id", "event_time", "broker_time", "topic",
                  "partition", "offset"]


class Detector:
    """The function applyInPandasWithState calls per (domain, bucket) group."""

    def __init__(self, entity_idle_s: int):
        self.idle_ms = entity_idle_s * 1000

    def __call__(self, key: tuple, frames: Iterator[pd.DataFrame],
                 state: GroupState) -> Iterator[pd.DataFrame]:
        domain, bucket_id = key
        if bucket_id == DLQ_BUCKET:  # dead letters pass through; their group keeps no state
            for frame in frames:
                yield _output({**_columns(frame), "kind": _constant("dlq", len(frame))},
                              len(frame))
            return
        bucket = (pickle.loads(state.get[0]) if state.exists
                  else {"entities": new_state(domain), "silent": {}, "check_at": None})
        watermark = state.getCurrentWatermarkMs()
        if not state.hasTimedOut:
            parts = list(frames)
            frame = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
            yield from self.detect(domain, bucket["entities"], frame)
        if domain in ABSENCE_AFTER_S and watermark >= (bucket["check_at"] or 0):
            silences = _silences(domain, bucket, watermark)
            if silences:
                yield _rows_output(silences)
            bucket["check_at"] = watermark + _ABSENCE_CHECK_MS
        self._evict(bucket, watermark)
        if not bucket["entities"]:
            state.remove()
            return
        state.update((pickle.dumps(bucket, protocol=pickle.HIGHEST_PROTOCOL),))
        if domain in ABSENCE_AFTER_S:
            # A timeout is dropped at every call and must be set again: the next silence
            # check of a bucket that gets no rows in the meantime.
            state.setTimeoutTimestamp(max(bucket["check_at"], watermark + 1))

    def detect(self, domain: str, entities: State, frame: pd.DataFrame
               ) -> Iterator[pd.DataFrame]:
        """Feature rows and rule incidents of one bucket's events; updates `entities`."""
        # Column by column in numpy: pandas' own sort, assign and reindex cost more per call
        # than the features of a bucket's events (measured: RESULTS, "columnar hot path").
        codes, _ = pd.factorize(frame["entity_id"].to_numpy(), sort=True)
        order = np.lexsort((frame["offset"].to_numpy(), frame["event_time"].to_numpy(), codes))
        events = {name: frame[name].to_numpy()[order] for name in _EVENT_COLUMNS}
        times = events["event_time"]
        matrix = fold(domain, entities, events["entity_id"], times,
                      [frame[c].to_numpy()[order] for c in ENGINES[domain].inputs])
        rows = len(order)
        features = np.fromiter(matrix, dtype=object, count=rows)  # one array per event's row
        yield _output({**events, "kind": _constant("features", rows), "features": features},
                      rows)
        incidents = [_incident(domain, {name: column[row] for name, column in events.items()},
                               rule, window, values)
                     for row, rule, window, values in hits(domain, times, matrix)]
        if incidents:
            yield _rows_output(incidents)

    def _evict(self, bucket: dict, watermark: int) -> None:
        if watermark <= self.idle_ms:  # no watermark yet
            return
        cutoff = watermark - self.idle_ms
        for entity in bucket["entities"].evict(cutoff).tolist():
            bucket["silent"].pop(entity, None)


def _silences(domain: str, bucket: dict, watermark: int) -> list[dict]:
    """One incident per entity whose last event the watermark passed by the absence time."""
    absence_ms = int(ABSENCE_AFTER_S[domain] * 1000)
    rule = absence_rule(domain)
    incidents = []
    entities = bucket["entities"]
    for entity, last in zip(entities.entity_ids.tolist(), entities.last_t.tolist(), strict=True):
        if last + absence_ms > watermark or bucket["silent"].get(entity) == last:
            continue
        bucket["silent"][entity] = last  # one incident per silence
        event = {"entity_id": entity, "event_id": None, "event_time": last + absence_ms,
                 "broker_time": None, "topic": None, "partition": None, "offset": None}
        incidents.append(_incident(domain, event, rule, window_start(rule, last, last),
                                   {"secs_since_last": (watermark - last) / 1000.0,
                                    "watermark": watermark}))
    return incidents


def _incident(domain: str, event, rule: Rule, window: int, evidence: dict) -> dict:
    return {"kind": "incident", "domain": domain, "entity_id": event["entity_id"],
            "event_id": event["event_id"], "event_time": event["event_time"],
            "broker_time": event["broker_time"], "topic": event["topic"],
            "partition": event["partition"], "offset": event["offset"],
            "detector": rule.detector, "severity": rule.severity, "window_start": window,
            "evidence": json.dumps({"rule": rule.doc, "kind": rule.kind, "values": evidence})}


def _output(columns: dict[str, np.ndarray], rows: int) -> pd.DataFrame:
    """One output frame: the given columns, the others missing, in OUTPUT order.

    A text, binary or array column goes as objects with None for missing: pyarrow turns
    all-NaN floats into a ChunkedArray for a string type, and Spark tries to iterate a NaN for
    an array type.
    """
    data = {}
    for name, as_objects in _FIELDS:
        column = columns.get(name)
        if column is None:
            column = _constant(None, rows) if as_objects else np.full(rows, np.nan)
        elif as_objects and column.dtype != object:
            column = np.where(pd.isna(column), None, column.astype(object))
        data[name] = column
    return pd.DataFrame(data, copy=False)


def _rows_output(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return _output(_columns(frame), len(frame))


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {name: frame[name].to_numpy() for name in frame.columns}


def _constant(value, rows: int) -> np.ndarray:
    return np.full(rows, value, dtype=object)
