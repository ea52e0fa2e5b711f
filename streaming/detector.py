"""The stateful step: per-entity feature state and pattern rules, grouped by (domain, bucket).

One `transformWithStateInPandas` group holds the states of all entities hashed to its bucket
in one value, folded with the shared feature engines in event-time order; the rules run on the
resulting feature rows. Event-time timers find entities that went silent without any closing
event. The output is one wide row type: features of every event (for scoring and the lake),
rule incidents, and dead letters passing through.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator

import pandas as pd
from pyspark.sql.streaming.stateful_processor import (
    ExpiredTimerInfo,
    StatefulProcessor,
    StatefulProcessorHandle,
    TimerValues,
)
from pyspark.sql.types import BinaryType, StructField, StructType

from models.features import ENGINES, fold
from models.rules import ABSENCE_AFTER_S, Rule, absence_rule, hits, window_start
from streaming.parse import DLQ_BUCKET, conform

OUTPUT = ", ".join([
    "kind string", "domain string", "entity_id string", "event_id string", "event_time long",
    "broker_time long", "topic string", "partition int", "offset long", "detector string",
    "severity string", "window_start long", "evidence string", "features array<double>",
    "reason string", "raw binary", "raw_length long", "raw_sha256 string"])
# How often a bucket re-checks its entities for silence, in event time.
_ABSENCE_CHECK_MS = 15_000


class Detector(StatefulProcessor):
    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.store = handle.getValueState(
            "entities", StructType([StructField("blob", BinaryType())]))

    def _load(self) -> dict:
        if self.store.exists():
            return pickle.loads(self.store.get()[0])
        return {"entities": {}, "silent": {}, "timer": None}

    def _save(self, bucket: dict) -> None:
        self.store.update((pickle.dumps(bucket, protocol=pickle.HIGHEST_PROTOCOL),))

    def handleInputRows(self, key: tuple, rows: Iterator[pd.DataFrame],
                        timerValues: TimerValues) -> Iterator[pd.DataFrame]:
        domain, bucket_id = key
        frame = pd.concat(list(rows), ignore_index=True)
        if bucket_id == DLQ_BUCKET:
            yield _output(frame.assign(kind="dlq"))
            return
        bucket = self._load()
        frame = frame.sort_values(["entity_id", "event_time"], kind="stable", ignore_index=True)
        engine = ENGINES[domain]
        matrix = fold(domain, bucket["entities"], frame["entity_id"].tolist(),
                      frame["event_time"].tolist(), [frame[c].tolist() for c in engine.inputs])
        features = frame[["domain", "entity_id", "event_id", "event_time", "broker_time",
                          "topic", "partition", "offset"]].assign(
            kind="features", features=list(matrix))
        yield _output(features)
        incidents = self._rule_incidents(domain, frame, matrix)
        if incidents:
            yield _output(pd.DataFrame(incidents))
        if domain in ABSENCE_AFTER_S and bucket["timer"] is None:
            bucket["timer"] = timerValues.getCurrentWatermarkInMs() + _ABSENCE_CHECK_MS
            self.handle.registerTimer(bucket["timer"])
        self._save(bucket)

    def _rule_incidents(self, domain: str, frame: pd.DataFrame, matrix) -> list[dict]:
        return [_incident(domain, frame.iloc[row], rule, window, values)
                for row, rule, window, values in hits(domain, frame["event_time"].to_numpy(),
                                                      matrix)]

    def handleExpiredTimer(self, key: tuple, timerValues: TimerValues,
                           expiredTimerInfo: ExpiredTimerInfo) -> Iterator[pd.DataFrame]:
        domain, _ = key
        bucket = self._load()
        watermark = timerValues.getCurrentWatermarkInMs()
        absence_ms = int(ABSENCE_AFTER_S[domain] * 1000)
        rule = absence_rule(domain)
        incidents = []
        for entity, state in bucket["entities"].items():
            last = state.get("last_t")
            if (last is None or last + absence_ms > watermark
                    or bucket["silent"].get(entity) == last):
                continue
            bucket["silent"][entity] = last  # one incident per silence
            event = {"entity_id": entity, "event_id": None, "event_time": last + absence_ms,
                     "broker_time": None, "topic": None, "partition": None, "offset": None}
            incidents.append(_incident(domain, event, rule, window_start(rule, last, last),
                                       {"secs_since_last": (watermark - last) / 1000.0,
                                        "watermark": watermark}))
        bucket["timer"] = watermark + _ABSENCE_CHECK_MS
        self.handle.registerTimer(bucket["timer"])
        self._save(bucket)
        if incidents:
            yield _output(pd.DataFrame(incidents))

    def close(self) -> None:
        pass


def _incident(domain: str, event, rule: Rule, window: int, evidence: dict) -> dict:
    return {"kind": "incident", "domain": domain, "entity_id": event["entity_id"],
            "event_id": event["event_id"], "event_time": event["event_time"],
            "broker_time": event["broker_time"], "topic": event["topic"],
            "partition": event["partition"], "offset": event["offset"],
            "detector": rule.detector, "severity": rule.severity, "window_start": window,
            "evidence": json.dumps({"rule": rule.doc, "kind": rule.kind, "values": evidence})}


def _output(frame: pd.DataFrame) -> pd.DataFrame:
    return conform(frame, OUTPUT)
