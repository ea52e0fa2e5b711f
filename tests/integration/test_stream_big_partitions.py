"""Partitions past 60K messages, written in small record batches as a paced producer writes
them: the stream started from the earliest offset still finds the end offsets, processes to
the end and raises the injected episodes' incidents. (With a 10 ms fetch wait, the end-offset
probe got no answer from the embedded broker at this size, and the job planned no batch.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from patternalarm import db, kafka
from patternalarm.generator import DomainStream, RateProfile, StreamSpec
from patternalarm.quality import detection_quality
from patternalarm.settings import PROJECT_ROOT
from tests.conftest import own_topics, processed, wait_until

pytestmark = pytest.mark.integration

BIN = os.path.dirname(sys.executable)
DOMAIN = "payments"
PER_PARTITION = 61_000
MINUTES = 20


def fill(cfg, start: datetime, n: int) -> None:
    """n ordinary events ending before `start`, in record batches of a few messages each."""
    # An hour of history: clear of the ranges the other stream tests judge (each counts every
    # incident in a time range of its own, and entity ids are shared).
    per_min = n / 60
    first_ms = int((start - timedelta(minutes=61)).timestamp() * 1000)
    stream = DomainStream(StreamSpec(DOMAIN, 29, "filler", first_ms, entities=3000,
                                     anomaly_rate=0.0), RateProfile.build(per_min, count=n))
    producer = kafka.producer(cfg, **{"linger.ms": 0, "batch.num.messages": 5,
                                      "queue.buffering.max.messages": 100_000})
    topic = cfg.events_topic(DOMAIN)
    for _ in range(n):  # a DomainStream never ends: its profile only spaces the events
        key, value, _, _ = next(stream)
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def test_the_stream_reads_partitions_past_60k_messages_to_the_end(stack):
    cfg, env = own_topics("b")
    start = datetime.now(UTC) - timedelta(minutes=MINUTES + 1)
    fill(cfg, start, PER_PARTITION * cfg.topic_partitions + 4_000)
    ends = kafka.end_offsets(cfg, [cfg.events_topic(DOMAIN)])
    assert min(ends.values()) > 60_000, ends

    generated = subprocess.run(
        [f"{BIN}/patternalarm", "generate", "--domain", DOMAIN, "--rate", "600",
         "--duration", str(MINUTES * 60), "--seed", "31",
         "--start-time", str(int(start.timestamp() * 1000)), "--anomaly-rate", "0.01",
         "--label-delay", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=600)
    assert generated.returncode == 0, generated.stderr[-3000:]
    summary = json.loads(generated.stdout)
    total = sum(ends.values()) + summary["sent"]

    query = f"big-{cfg.topic_prefix}"
    log_path = cfg.var_dir / f"{query}.log"
    with open(log_path, "wb") as log:
        job = subprocess.Popen(
            [f"{BIN}/spark-submit", "--master", "local[2]",
             str(PROJECT_ROOT / "streaming" / "job.py"), "--domains", DOMAIN,
             "--query-name", query, "--starting-offsets", "earliest"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: job.poll() is not None or processed(cfg, query) >= total,
                       timeout_s=900)
            assert job.poll() is None, log_path.read_text()[-3000:]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGTERM)
            job.wait(120)
    output = log_path.read_text()
    assert "end_offsets_unavailable" not in output, output[-3000:]
    assert processed(cfg, query) == total

    with contextlib.closing(db.connect(cfg)) as conn:
        quality = detection_quality(conn, [summary["run_id"]], [DOMAIN],
                                    since=start + timedelta(minutes=5),
                                    until=start + timedelta(minutes=MINUTES))
    q = quality[DOMAIN]
    assert q.episodes >= 10 and q.recall >= 0.9, q.as_dict()
