"""The stream's parse step against the contract: every hostile class becomes a dead letter with
its reason, valid events pass typed, and the frame converts to Arrow (as Spark will)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from patternalarm import domains
from patternalarm.events import InvalidEvent
from patternalarm.settings import DOMAINS
from streaming.parse import DLQ_BUCKET, DLQ_RAW_BYTES, EventParser
from tests.hostile import hostile_messages
from tests.unit.test_events import generated

NOW = pd.Timestamp.now(tz="UTC")


def parsed(domain: str, values: list, broker_ms: list[int] | None = None) -> pd.DataFrame:
    """The parse step's rows, in the order of the records (offsets 0, 1, ...)."""
    topic = f"t.events.{domain}"
    size = len(values)
    batch = EventParser({topic: domain}, buckets=8, max_future_skew_s=300).parse(
        [topic] * size, [0] * size, list(range(size)),
        broker_ms or [int(NOW.timestamp() * 1000)] * size, values)
    return batch.to_pandas().sort_values("offset", ignore_index=True)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_hostile_class_is_a_dead_letter_with_its_reason(domain):
    valid = generated(domain, 1)[0]
    cases = hostile_messages(valid)
    values = [valid, *(raw for raw, _ in cases.values()), valid]
    out = parsed(domain, values)
    assert len(out) == len(values)
    for (name, (raw, reason)), row in zip(cases.items(), out.iloc[1:-1].itertuples(),
                                          strict=True):
        assert row.bucket == DLQ_BUCKET, name
        assert reason in row.reason, (name, row.reason)
        assert pd.isna(row.event_ts) and pd.isna(row.event_time), name
        if raw is not None:
            assert row.raw == raw[:DLQ_RAW_BYTES] and row.raw_length == len(raw), name
            assert row.raw_sha256 == hashlib.sha256(raw).hexdigest(), name
    # The stream goes on: the valid events around them are typed rows.
    assert (out.iloc[[0, -1]]["bucket"] >= 0).all() and out.iloc[[0, -1]]["reason"].isna().all()


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_parse_step_agrees_with_the_contract(domain):
    """Same verdict as contract(domain).parse on valid and invalid messages of every kind."""
    contract = domains.contract(domain)
    values = [*generated(domain, 50), *(raw for raw, _ in hostile_messages(
        generated(domain, 1)[0]).values())]
    out = parsed(domain, values)
    for raw, row in zip(values, out.itertuples(), strict=True):
        try:
            contract.parse(raw)
            accepted = True
        except InvalidEvent:
            accepted = False
        future = pd.notna(row.reason) and "future_event_time" in row.reason
        assert accepted == (row.bucket != DLQ_BUCKET) or future, (raw[:80], row.reason)


def test_an_event_ahead_of_its_broker_timestamp_is_a_dead_letter():
    valid = generated("iot", 1)[0]
    event_ms = int(domains.contract("iot").parse(valid)["event_time"])
    out = parsed("iot", [valid, valid], broker_ms=[event_ms - 301_000, event_ms - 299_000])
    assert out["bucket"].tolist()[0] == DLQ_BUCKET and "301s ahead" in out["reason"][0]
    assert out["bucket"].tolist()[1] >= 0
