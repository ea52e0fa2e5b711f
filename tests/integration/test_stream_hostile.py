"""Hostile input end to end: every class of bad message, mixed with valid traffic, goes through
the broker to the streaming job. The job keeps committing batches, each hostile message lands
on the dead-letter topic with its reason, and the valid events sent after them are processed
normally: their incidents are raised and none is counted late (a far-future event time or a
dead letter timed by the broker would otherwise move the watermark past them)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from patternalarm import db, kafka
from patternalarm.generator import DomainStream, RateProfile, StreamSpec
from patternalarm.quality import detection_quality
from patternalarm.settings import DOMAINS
from tests.conftest import own_topics, run_stream_available_now
from tests.hostile import hostile_messages

pytestmark = pytest.mark.integration

BIN = os.path.dirname(sys.executable)
MINUTES = 25
WARMUP = timedelta(minutes=12)  # a device has a dozen readings: a baseline to break


def valid_events(domain: str, start_ms: int, n: int) -> list[tuple[bytes, bytes]]:
    stream = DomainStream(StreamSpec(domain, 3, "hostile", start_ms, entities=50,
                                     anomaly_rate=0.0), RateProfile.build(600, count=n))
    return [next(stream)[:2] for _ in range(n)]


def dead_letters(cfg) -> dict[str, dict]:
    reader = kafka.consumer(cfg, f"hostile-check-{cfg.topic_prefix}",
                            **{"auto.offset.reset": "earliest"})
    total = sum(kafka.end_offsets(cfg, [cfg.dlq_topic]).values())
    reader.subscribe([cfg.dlq_topic])
    letters: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    try:
        while len(letters) < total:
            assert time.monotonic() < deadline, f"read {len(letters)} of {total} dead letters"
            for msg in reader.consume(500, 1.0):
                assert msg.error() is None, msg.error()
                letters[msg.key().decode()] = json.loads(msg.value())
    finally:
        reader.close()
    return letters


def test_hostile_messages_are_dead_lettered_and_valid_traffic_after_them_is_detected(stack):
    cfg, env = own_topics("h")
    query = f"hostile-{cfg.topic_prefix}"
    # Valid traffic after the hostile messages starts 21 minutes ago: behind any watermark a
    # far-future event or a broker-timed dead letter would set. The valid events mixed with the
    # hostile ones come before it in event time, as a stream's earlier traffic would.
    start = datetime.now(UTC) - timedelta(minutes=MINUTES + 1)
    start_ms = int(start.timestamp() * 1000)
    # Room for a message near the broker's maximum (the producer's default cap is 1 MB).
    producer = kafka.producer(cfg, **{"message.max.bytes": 2_000_000})
    sent: dict[str, tuple[str, str]] = {}  # topic:partition:offset -> (class, reason)

    def delivered(name: str, reason: str):
        def on_delivery(err, msg):
            assert err is None, (name, err)
            sent[f"{msg.topic()}:{msg.partition()}:{msg.offset()}"] = (name, reason)
        return on_delivery

    for domain in DOMAINS:
        topic = cfg.events_topic(domain)
        valid = valid_events(domain, start_ms - 600_000, 40)
        hostile = list(hostile_messages(valid[0][1]).items())
        for i, (key, value) in enumerate(valid):  # interleaved: hostile among valid ones
            producer.produce(topic, key=key, value=value)
            if i < len(hostile):
                name, (raw, reason) = hostile[i]
                producer.produce(topic, key=key, value=raw,
                                 on_delivery=delivered(f"{domain}/{name}", reason))
    assert producer.flush(60) == 0
    assert len(sent) == len(DOMAINS) * len(hostile)

    run_stream_available_now(env, query)
    letters = dead_letters(cfg)
    for position, (name, reason) in sent.items():
        assert position in letters, f"{name} not dead-lettered"
        assert reason in letters[position]["reason"], (name, letters[position]["reason"])
        assert len(json.dumps(letters[position])) < 1_000_000

    generated = subprocess.run(
        [f"{BIN}/patternalarm", "generate", "--domain", ",".join(DOMAINS), "--rate", "300",
         "--duration", str(MINUTES * 60), "--seed", "23",
         "--start-time", str(start_ms), "--anomaly-rate", "0.01",
         "--label-delay", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=600)
    assert generated.returncode == 0, generated.stderr[-3000:]
    summary = json.loads(generated.stdout)
    # A restart from the checkpoint, in several micro-batches: the watermark moves between them.
    run_stream_available_now(env, query, stream_max_offsets_per_trigger="3000")

    with contextlib.closing(db.connect(cfg)) as conn, conn.cursor() as cur:
        cur.execute("""SELECT sum(input_rows), sum(dead_lettered), sum(late_events), count(*)
                       FROM stream_metrics WHERE query_name = %s""", (query,))
        rows, dead, late, batches = cur.fetchone()
        quality = detection_quality(conn, [summary["run_id"]], list(DOMAINS),
                                    since=start + WARMUP, until=start + timedelta(minutes=MINUTES))
        cur.execute("""SELECT g.domain, g.kind, g.entity_id, g.start_time, g.end_time
                       FROM ground_truth g WHERE g.run_id = %s AND NOT g.truncated
                         AND g.start_time >= %s AND NOT EXISTS (
                           SELECT 1 FROM incidents i WHERE i.domain = g.domain
                              AND i.entity_id = g.entity_id
                              AND i.last_event_time >= g.start_time - interval '60 s'
                              AND i.first_event_time <= g.end_time + interval '120 s')""",
                    (summary["run_id"], start + WARMUP))
        missed = cur.fetchall()
    assert batches > 2
    assert dead == len(sent)
    assert rows == len(sent) + len(DOMAINS) * 40 + summary["sent"]
    assert late == 0
    report = json.dumps({"quality": {d: q.as_dict() for d, q in quality.items()},
                         "missed": missed}, default=str)
    for q in quality.values():
        assert q.episodes >= 5, report
        assert q.recall >= 0.9, report
