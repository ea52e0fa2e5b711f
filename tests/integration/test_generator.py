"""The generator and replay on the real embedded broker and Postgres: what the summary reports
is what is on the topics and in ground_truth."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict

import pytest
from confluent_kafka import TopicPartition

from patternalarm import db, domains, kafka
from patternalarm.events import InvalidEvent, label_problems

pytestmark = pytest.mark.integration


def generate(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "patternalarm.cli", "generate", *argv, "--json"],
                          capture_output=True, text=True, env=os.environ, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def read_between(cfg, before: dict, after: dict, topic: str) -> list:
    """Every message of `topic` between two end-offset snapshots."""
    reader = kafka.consumer(cfg, f"test-read-{uuid.uuid4().hex[:8]}")
    wanted = {p: (before.get((t, p), 0), end) for (t, p), end in after.items() if t == topic}
    reader.assign([TopicPartition(topic, p, start) for p, (start, _) in wanted.items()])
    pending = {p for p, (start, end) in wanted.items() if end > start}
    got = []
    try:
        while pending:
            for msg in reader.consume(10_000, 1.0):
                assert msg.error() is None, msg.error()
                if msg.offset() < wanted[msg.partition()][1]:
                    got.append(msg)
                if msg.offset() + 1 >= wanted[msg.partition()][1]:
                    pending.discard(msg.partition())
    finally:
        reader.close()
    return got


def ground_truth(cfg, run_id: str) -> dict[str, tuple]:
    with contextlib.closing(db.connect(cfg)) as conn, conn.cursor() as cur:
        cur.execute("SELECT episode_id, domain, entity_id, kind, event_ids, "
                    "labels_published_at IS NOT NULL FROM ground_truth WHERE run_id = %s",
                    (run_id,))
        return {row[0]: row[1:] for row in cur.fetchall()}


def test_a_run_puts_on_the_broker_and_in_ground_truth_exactly_what_it_reports(stack):
    topics = [stack.events_topic(d) for d in domains.MODELS] + [stack.labels_topic]
    before = kafka.end_offsets(stack, topics)
    summary = generate("--domain", "payments,gaming,iot", "--rate", "60000", "--count", "3000",
                       "--entities", "200", "--anomaly-rate", "0.01", "--late-fraction", "0.02",
                       "--malformed-fraction", "0.01", "--label-delay", "1")
    after = kafka.end_offsets(stack, topics)

    assert summary["undelivered"] == 0 and summary["delivery_errors"] == 0
    truth = ground_truth(stack, summary["run_id"])
    assert len(truth) == summary["episodes"] == summary["labels_published"] > 0
    assert all(published for *_, published in truth.values())

    delivered: dict[str, tuple[str, int]] = {}   # event id -> (entity, partition)
    for domain, counts in summary["per_domain"].items():
        topic = stack.events_topic(domain)
        assert counts["sent"] == 3_000 and counts["malformed"] > 0 and counts["late"] > 0
        messages = read_between(stack, before, after, topic)
        assert len(messages) == counts["sent"]
        invalid = 0
        partitions = defaultdict(set)
        for msg in messages:
            partitions[msg.key()].add(msg.partition())
            try:
                event = domains.contract(domain).parse(msg.value())
            except InvalidEvent:
                invalid += 1
                continue
            assert event["entity_id"].encode() == msg.key()
            delivered[event["event_id"]] = (event["entity_id"], msg.partition())
        assert invalid == counts["malformed"]
        assert all(len(p) == 1 for p in partitions.values())  # an entity stays on a partition
        assert sum(1 for row in truth.values() if row[0] == domain) == counts["episodes"]

    for domain, entity, kind, event_ids, _ in truth.values():
        assert kind in domains.MODELS[domain].ANOMALIES
        assert event_ids and {delivered[e][0] for e in event_ids} == {entity}

    labels = read_between(stack, before, after, stack.labels_topic)
    assert len(labels) == summary["labels_published"]
    for msg in labels:
        label = json.loads(msg.value())
        assert label_problems(label) == []
        assert truth[label["episode_id"]][:4] == (label["domain"], label["entity_id"],
                                                  label["kind"], label["event_ids"])


def test_replay_of_a_labelled_file(stack, tmp_path):
    rows = ["card,Time,Amount,V1,Class"]
    fraud = set()
    for i in range(60):
        label = int(i % 12 == 5)
        rows.append(f"c{i % 7},{i * 2},{10 + i}.25,{i / 10},{label}")
        if label:
            fraud.add((f"c{i % 7}", 10 + i + 0.25))
    path = tmp_path / "cards.csv"
    path.write_text("\n".join(rows) + "\n")
    topic = stack.events_topic("payments")
    before = kafka.end_offsets(stack, [topic, stack.labels_topic])
    summary = generate("--from-file", str(path), "--domain", "payments", "--entity-col", "card",
                       "--time-col", "Time", "--label-col", "Class", "--speedup", "100",
                       "--label-delay", "0")
    after = kafka.end_offsets(stack, [topic, stack.labels_topic])

    assert summary["sent"] == summary["replay"]["rows"] == 60
    assert summary["replay"]["labelled_rows"] == summary["episodes"] == len(fraud) == 5
    events = {}
    for msg in read_between(stack, before, after, topic):
        event = domains.contract("payments").parse(msg.value())
        events[event["event_id"]] = event
    assert len(events) == 60
    truth = ground_truth(stack, summary["run_id"])
    labelled = {(events[e]["entity_id"], events[e]["payload"]["amount"])
                for *_, ids, _ in truth.values() for e in ids}
    assert labelled == fraud
    assert {kind for _, _, kind, _, _ in truth.values()} == {"Class=1"}
    assert len(read_between(stack, before, after, stack.labels_topic)) == 5
