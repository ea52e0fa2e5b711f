"""The stateful step's function, called as applyInPandasWithState calls it: rows in, state kept
between calls, silence found by the group's event-time timeout, idle entities evicted."""

from __future__ import annotations

import time

import pandas as pd
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout
from pyspark.sql.types import BinaryType, StructField, StructType

from models.rules import ABSENCE_AFTER_S
from streaming.detector import STATE, Detector
from streaming.parse import DLQ_BUCKET, EventParser
from tests.unit.test_events import generated

IDLE_S = 3600


def group_state(previous: GroupState | None, watermark_ms: int,
                timed_out: bool = False) -> GroupState:
    """What Spark hands the function: the value the previous call left, and the watermark."""
    value = previous.get if previous is not None and previous.exists else None
    return GroupState(value, 0, watermark_ms, GroupStateTimeout.EventTimeTimeout, timed_out,
                      True, value is not None, False, False, -1, b"key",
                      StructType([StructField(name, BinaryType()) for name, _ in [STATE.split()]]))


def rows(domain: str, n: int) -> pd.DataFrame:
    topic = f"t.events.{domain}"
    now_ms = int(time.time() * 1000)
    batch = EventParser({topic: domain}, buckets=1, max_future_skew_s=300).parse(
        [topic] * n, [0] * n, list(range(n)), [now_ms] * n, generated(domain, n))
    frame = batch.to_pandas()
    assert (frame["bucket"] != DLQ_BUCKET).all()
    return frame


def call(state: GroupState, domain: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
    out = list(Detector(IDLE_S)((domain, 0), iter(frames), state))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["kind"])


def test_features_for_every_row_and_the_state_carried_to_the_next_call():
    events = rows("payments", 200)
    first = group_state(None, 0)
    out = call(first, "payments", [events.iloc[:120], events.iloc[120:150]])
    assert (out["kind"] == "features").sum() == 150
    assert first.exists and first._updated
    second = group_state(first, 0)
    out = call(second, "payments", [events.iloc[150:]])
    assert sorted(out.loc[out["kind"] == "features", "offset"]) == list(range(150, 200))
    # history carried over: the same entity's count goes on from the first call
    history = out.loc[out["kind"] == "features", "features"].map(lambda f: f[-1])
    assert history.max() > 0


def test_silence_is_raised_once_by_the_timeout_of_a_bucket_that_gets_no_rows():
    events = rows("iot", 60)
    last = int(events["event_time"].max())
    state = group_state(None, last)
    call(state, "iot", [events])
    assert state.getCurrentWatermarkMs() < state._timeout_timestamp  # a check is scheduled
    quiet = last + int(ABSENCE_AFTER_S["iot"] * 1000) + 60_000
    timed_out = group_state(state, quiet, timed_out=True)
    out = call(timed_out, "iot", [])
    silent = out[out["kind"] == "incident"]
    assert len(silent) == events["entity_id"].nunique()
    assert set(silent["detector"]) == {"silence"}
    again = group_state(timed_out, quiet + 30_000, timed_out=True)
    assert not (call(again, "iot", [])["kind"] == "incident").any()  # one incident per silence


def test_entities_idle_past_the_limit_leave_the_state():
    events = rows("iot", 60)
    state = group_state(None, 0)
    call(state, "iot", [events])
    gone = group_state(state, int(events["event_time"].max()) + IDLE_S * 1000 + 1,
                       timed_out=True)
    call(gone, "iot", [])
    assert gone._removed  # nothing live: the bucket's state is dropped, not kept empty


def test_dead_letters_pass_through_without_state():
    dead = pd.DataFrame({"domain": ["iot"], "bucket": [DLQ_BUCKET], "reason": ["bad"],
                         "offset": [7]})
    state = group_state(None, 0)
    out = list(Detector(IDLE_S)(("iot", DLQ_BUCKET), iter([dead]), state))
    assert out[0]["kind"].tolist() == ["dlq"] and not state.exists
