"""The chaos reference: the events a run sent, rebuilt offline, and what the lake shows
committed; no services."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.reference import incident_table, plan_from_json, sent_events
from patternalarm import lake
from patternalarm.generator import DomainStream, RunPlan, Spike
from patternalarm.settings import Settings

START_MS = 1_700_000_000_000
PLAN = RunPlan(domains=("payments",), per_min=600, mode="CUSTOM", duration_s=60,
               spike=Spike("burst", 10, at_s=20), anomaly_rate=0.05, malformed_fraction=0.02,
               late_fraction=0.01, first_entity=4_200_000)


def test_the_rebuild_is_the_generator_stream_with_malformed_and_late_counted():
    plan = plan_from_json(json.loads(json.dumps(dataclasses.asdict(PLAN))))
    assert plan == PLAN
    frames, malformed, late = sent_events(plan, "gX", START_MS)
    stream = DomainStream(PLAN.stream_spec("payments", "gX", START_MS), PLAN.timeline())
    flags = Counter(next(stream)[3] for _ in range(PLAN.timeline().total))
    assert (malformed, late) == (flags["malformed"], flags["late"]) and malformed and late
    events = frames["payments"]
    assert len(events) == PLAN.timeline().total - malformed
    assert events["event_id"].str.startswith("gX-").all()
    assert events["entity_id"].str.slice(5).astype(int).min() >= 4_200_000


def test_the_reference_holds_the_rules_incidents_of_the_episodes():
    frames, _, _ = sent_events(dataclasses.replace(PLAN, malformed_fraction=0.0,
                                                   late_fraction=0.0), "gY", START_MS)
    table = incident_table(frames, {})
    assert table and all(v["event_count"] >= 1 for v in table.values())
    assert {v["detector"] for v in table.values()} <= {
        "velocity_burst", "card_testing", "impossible_travel", "amount_spike",
        "test_then_spend"}
    # Without the events of one incident's entity, its incidents go.
    entity = next(iter(table.values()))["entity_id"]
    events = frames["payments"]
    fewer = incident_table({"payments": events[events["entity_id"] != entity]}, {})
    assert not any(v["entity_id"] == entity for v in fewer.values())


@pytest.fixture
def cfg(tmp_path):
    cfg = Settings(var_dir=tmp_path)
    for batch_id, ids in {3: ["gA-p1", "gA-p2", "other-1"], 4: ["gA-p2", "gB-p9"]}.items():
        table = pa.table({"domain": ["payments"] * len(ids), "event_id": ids})
        pq.write_to_dataset(table, lake.batch_dir(cfg, batch_id), partition_cols=["domain"])
    return cfg


def test_lake_counts_each_run_event_per_batch_that_committed_it(cfg):
    assert lake.event_ids(cfg, [3, 4, 5], ("gA-", "gB-")) == Counter(
        {"gA-p1": 1, "gA-p2": 2, "gB-p9": 1})
    assert lake.event_ids(cfg, [4], ("gA-",)) == Counter({"gA-p2": 1})
