"""Exactly-once incident sink: one Postgres transaction per micro-batch.

The batch id goes into the stream_batches ledger in the same transaction as the batch's
incidents and metrics. Spark replays a batch whose commit it did not record (a crash between
our commit and its own); the ledger row makes that replay a no-op. Incident keys are
deterministic in (domain, entity, detector, window), so retriggers and alert storms merge into
one row with counts and a last-seen time instead of new rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg2.extensions import connection
from psycopg2.extras import Json, execute_values

SEVERITIES = ("low", "medium", "high", "critical")


def incident_key(domain: str, entity_id: str, detector: str, window_start_ms: int) -> str:
    """Stable key: the same detection in the same window always maps to the same row."""
    digest = hashlib.sha1(f"{domain}\x1f{entity_id}\x1f{detector}\x1f{window_start_ms}".encode())
    return f"{domain}:{detector}:{digest.hexdigest()[:20]}"


@dataclass(frozen=True)
class Incident:
    domain: str
    entity_id: str
    detector: str
    detector_kind: str  # rule | model
    window_start_ms: int
    severity: str
    first_event_ms: int
    last_event_ms: int
    event_count: int = 1
    score: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return incident_key(self.domain, self.entity_id, self.detector, self.window_start_ms)


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


_SEVERITY_ORDER = "ARRAY[" + ",".join(f"'{s}'" for s in SEVERITIES) + "]"
_UPSERT = f"""
INSERT INTO incidents (incident_key, domain, entity_id, detector, detector_kind, window_start,
                       severity, score, model_name, model_version, first_event_time,
                       last_event_time, event_count, evidence)
VALUES %s
ON CONFLICT (incident_key) DO UPDATE SET
    event_count     = incidents.event_count + EXCLUDED.event_count,
    trigger_count   = incidents.trigger_count + 1,
    first_event_time = LEAST(incidents.first_event_time, EXCLUDED.first_event_time),
    last_event_time = GREATEST(incidents.last_event_time, EXCLUDED.last_event_time),
    last_seen_at    = now(),
    severity        = CASE WHEN array_position({_SEVERITY_ORDER}, EXCLUDED.severity)
                                > array_position({_SEVERITY_ORDER}, incidents.severity)
                           THEN EXCLUDED.severity ELSE incidents.severity END,
    score           = GREATEST(incidents.score, EXCLUDED.score),
    model_name      = COALESCE(EXCLUDED.model_name, incidents.model_name),
    model_version   = COALESCE(EXCLUDED.model_version, incidents.model_version),
    evidence        = incidents.evidence || EXCLUDED.evidence
"""

@dataclass(frozen=True)
class BatchMetrics:
    """What one micro-batch did; one row of stream_metrics and one log line."""

    input_rows: int
    processing_ms: float
    event_latency_p50_ms: float | None = None
    event_latency_p99_ms: float | None = None
    broker_latency_p50_ms: float | None = None
    broker_latency_p99_ms: float | None = None
    lag_total: int | None = None
    lag_by_partition: Mapping[str, int] = field(default_factory=dict)
    late_events: int = 0
    dead_lettered: int = 0
    model_versions: Mapping[str, str] = field(default_factory=dict)


_METRIC_COLUMNS = tuple(BatchMetrics.__dataclass_fields__)


def commit_batch(conn: connection, query_name: str, batch_id: int,
                 incidents: Sequence[Incident], metrics: BatchMetrics) -> bool:
    """Write a micro-batch's incidents and metrics exactly once; False if already committed."""
    merged = _merge_same_key(incidents)
    with conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO stream_batches (query_name, batch_id, input_rows, incidents)
               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING batch_id""",
            (query_name, batch_id, metrics.input_rows, len(merged)))
        if cur.fetchone() is None:
            return False
        if merged:
            rows = [(i.key, i.domain, i.entity_id, i.detector, i.detector_kind,
                     _ts(i.window_start_ms), i.severity, i.score, i.model_name, i.model_version,
                     _ts(i.first_event_ms), _ts(i.last_event_ms), i.event_count,
                     Json(dict(i.evidence))) for i in merged]
            execute_values(cur, _UPSERT, rows)
        values = asdict(metrics)
        for column in ("lag_by_partition", "model_versions"):
            values[column] = Json(values[column])
        cur.execute(
            f"""INSERT INTO stream_metrics (query_name, batch_id, incidents,
                    {", ".join(_METRIC_COLUMNS)})
                VALUES (%s, %s, %s, {", ".join(["%s"] * len(_METRIC_COLUMNS))})""",
            (query_name, batch_id, len(merged), *values.values()))
    return True


def _merge_same_key(incidents: Sequence[Incident]) -> list[Incident]:
    """One row per key within a batch (ON CONFLICT cannot touch a row twice in one statement)."""
    by_key: dict[str, Incident] = {}
    for incident in incidents:
        seen = by_key.get(incident.key)
        if seen is None:
            by_key[incident.key] = incident
            continue
        worse = max(seen, incident, key=lambda i: SEVERITIES.index(i.severity))
        scores = [s for s in (seen.score, incident.score) if s is not None]
        by_key[incident.key] = Incident(**{
            **asdict(worse),
            "first_event_ms": min(seen.first_event_ms, incident.first_event_ms),
            "last_event_ms": max(seen.last_event_ms, incident.last_event_ms),
            "event_count": seen.event_count + incident.event_count,
            "score": max(scores) if scores else None,
            "evidence": {**seen.evidence, **incident.evidence},
        })
    return list(by_key.values())


def log_line(query_name: str, batch_id: int, metrics: BatchMetrics) -> str:
    """The one structured log line per micro-batch."""
    return json.dumps({"event": "micro_batch", "query": query_name, "batch_id": batch_id,
                       **asdict(metrics)}, default=str)
