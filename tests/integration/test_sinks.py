"""Exactly-once micro-batch commits on the real Postgres."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from models.incidents import Incident
from patternalarm import db
from streaming.sinks import BatchMetrics, commit_batch

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
ONE_ROW = BatchMetrics(input_rows=1, processing_ms=1.0)


def incident(entity: str, **kw) -> Incident:
    base = dict(domain="iot", entity_id=entity, detector="flatline", detector_kind="rule",
                window_start_ms=T0, severity="medium", first_event_ms=T0,
                last_event_ms=T0 + 1_000, event_count=4)
    return Incident(**{**base, **kw})


@pytest.fixture
def conn(stack):
    with contextlib.closing(db.connect(stack)) as connection:
        yield connection


def fetch(conn, sql, *params):
    with conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_replayed_batch_is_skipped(conn):
    query = f"q-{uuid.uuid4().hex[:6]}"
    entity = f"dev-{uuid.uuid4().hex[:6]}"
    metrics = BatchMetrics(input_rows=100, processing_ms=12.5, lag_by_partition={"t-0": 3})
    assert commit_batch(conn, query, 0, [incident(entity)], metrics) is True
    # Spark replays batch 0 after a crash: nothing changes.
    assert commit_batch(conn, query, 0, [incident(entity)], metrics) is False
    assert fetch(conn, "SELECT event_count, trigger_count FROM incidents WHERE entity_id = %s",
                 entity) == [(4, 1)]
    assert fetch(conn, "SELECT count(*) FROM stream_metrics WHERE query_name = %s",
                 query) == [(1,)]
    assert fetch(conn, "SELECT input_rows, incidents FROM stream_batches WHERE query_name = %s",
                 query) == [(100, 1)]


def test_retriggers_merge_into_one_incident(conn):
    query = f"q-{uuid.uuid4().hex[:6]}"
    entity = f"dev-{uuid.uuid4().hex[:6]}"
    commit_batch(conn, query, 0, [incident(entity, evidence={"run": 40})], ONE_ROW)
    commit_batch(conn, query, 1, [incident(entity, severity="critical", event_count=2,
                                           last_event_ms=T0 + 9_000, evidence={"run": 55})],
                 ONE_ROW)
    commit_batch(conn, query, 2, [incident(entity, severity="low", event_count=1)],
                 ONE_ROW)
    rows = fetch(conn, """SELECT event_count, trigger_count, severity, evidence,
                                 extract(epoch from last_event_time) * 1000
                          FROM incidents WHERE entity_id = %s""", entity)
    assert len(rows) == 1
    count, triggers, severity, evidence, last_ms = rows[0]
    assert (count, triggers, severity) == (7, 3, "critical")
    assert evidence == {"run": 55} and last_ms == T0 + 9_000


def test_a_failed_batch_leaves_nothing_behind(conn):
    query = f"q-{uuid.uuid4().hex[:6]}"
    entity = f"dev-{uuid.uuid4().hex[:6]}"
    bad = incident(entity, severity="catastrophic")  # violates the CHECK constraint
    with pytest.raises(Exception, match="severity"):
        commit_batch(conn, query, 0, [bad], ONE_ROW)
    assert fetch(conn, "SELECT count(*) FROM stream_batches WHERE query_name = %s",
                 query) == [(0,)]
    # The retry of the same batch id is not mistaken for a replay.
    assert commit_batch(conn, query, 0, [incident(entity)], ONE_ROW) is True
