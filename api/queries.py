"""SQL the API runs, built from constant fragments: user input only ever travels as parameters.

Pure functions returning (sql, params), so the filter and pagination logic is unit-tested
without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from patternalarm import db

Query = tuple[str, list[object]]

INCIDENT_COLUMNS = (
    "incident_key, domain, entity_id, detector, detector_kind, window_start, severity, score, "
    "model_name, model_version, first_event_time, last_event_time, detected_at, last_seen_at, "
    "event_count, trigger_count, status, status_changed_at")

# Which status an incident may move to from which: resolving is final, acknowledging is
# skipped when an analyst resolves straight away.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "acknowledged": ("open", "acknowledged"),
    "resolved": ("open", "acknowledged", "resolved"),
}


@dataclass(frozen=True)
class IncidentFilter:
    domain: str | None = None
    detector: str | None = None
    status: str | None = None
    entity_id: str | None = None
    since: datetime | None = None  # detected_at >= since
    until: datetime | None = None  # detected_at < until

    def where(self) -> Query:
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (("domain", self.domain), ("detector", self.detector),
                              ("status", self.status), ("entity_id", self.entity_id)):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        if self.since is not None:
            clauses.append("detected_at >= %s")
            params.append(self.since)
        if self.until is not None:
            clauses.append("detected_at < %s")
            params.append(self.until)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def list_incidents(filters: IncidentFilter, limit: int, offset: int) -> Query:
    where, params = filters.where()
    # incident_key breaks ties, so pages never overlap or skip rows with equal timestamps.
    sql = (f"SELECT {INCIDENT_COLUMNS} FROM incidents {where} "
           "ORDER BY detected_at DESC, incident_key LIMIT %s OFFSET %s")
    return sql, [*params, limit, offset]


def count_incidents(filters: IncidentFilter) -> Query:
    where, params = filters.where()
    return f"SELECT count(*) AS total FROM incidents {where}", params


def get_incident(key: str) -> Query:
    return f"SELECT {INCIDENT_COLUMNS}, evidence FROM incidents WHERE incident_key = %s", [key]


def set_status(key: str, status: str) -> Query:
    """Move an incident to `status` if allowed from its current one; returns the row if moved.

    status_changed_at only moves when the status does, so a repeated PATCH is idempotent.
    """
    sql = (f"UPDATE incidents SET status = %s, status_changed_at = CASE WHEN status = %s "
           f"THEN status_changed_at ELSE now() END "
           f"WHERE incident_key = %s AND status = ANY(%s) RETURNING {INCIDENT_COLUMNS}, evidence")
    return sql, [status, status, key, list(TRANSITIONS[status])]


# --- dashboard ------------------------------------------------------------------------------

def stream_series(window: timedelta, step: timedelta) -> Query:
    """Per time bucket: rows, latency (p50 weighted by rows, p99 the worst batch), lag."""
    sql = """
        SELECT date_bin(%s, recorded_at, TIMESTAMPTZ 'epoch') AS t,
               sum(input_rows)::float8 AS rows,  -- sum(bigint) is numeric: Decimal
               sum(event_latency_p50_ms * input_rows) / NULLIF(sum(input_rows), 0) AS p50_ms,
               max(event_latency_p99_ms) AS p99_ms,
               max(lag_total) AS lag
        FROM stream_metrics WHERE recorded_at >= now() - %s
        GROUP BY 1 ORDER BY 1"""
    return sql, [step, window]


# The same figures as `patternalarm status`.
stream_now = db.stream_now


def incidents_over_time(dimension: str, window: timedelta, step: timedelta) -> Query:
    if dimension not in ("domain", "detector"):
        raise ValueError(f"cannot group incidents by {dimension!r}")
    sql = (f"SELECT date_bin(%s, detected_at, TIMESTAMPTZ 'epoch') AS t, {dimension} AS key, "
           "count(*) AS n FROM incidents WHERE detected_at >= now() - %s "
           "GROUP BY 1, 2 ORDER BY 1, 2")
    return sql, [step, window]


def recent_load_runs(limit: int) -> Query:
    sql = ("SELECT run_id, started_at, finished_at, status, mode, rate_per_min, domains, "
           "duration_s, events_sent, throughput_per_min, latency_p50_ms, latency_p99_ms, "
           "max_lag, drain_s, recall, precision, chart_path IS NOT NULL AS has_chart "
           "FROM load_runs ORDER BY started_at DESC LIMIT %s")
    return sql, [limit]


def recent_chaos_runs(limit: int) -> Query:
    sql = ("SELECT run_id, scenario, started_at, finished_at, injected, events_sent, "
           "events_lost, incidents_duplicated, late_events, dead_lettered, recovery_s, "
           "verdict FROM chaos_runs ORDER BY started_at DESC LIMIT %s")
    return sql, [limit]


def load_run_chart(run_id: str) -> Query:
    return "SELECT chart_path FROM load_runs WHERE run_id = %s", [run_id]
