"""The SQL the API builds: filters become parameters, never text; pages are stable."""

from datetime import UTC, datetime, timedelta

import pytest

from api import queries
from api.queries import IncidentFilter


def test_no_filter_has_no_where_clause():
    sql, params = queries.list_incidents(IncidentFilter(), limit=50, offset=0)
    assert "WHERE" not in sql
    assert params == [50, 0]


def test_filters_travel_as_parameters_in_a_fixed_order():
    since = datetime(2025, 1, 1, tzinfo=UTC)
    until = since + timedelta(hours=1)
    hostile = "payments'; DROP TABLE incidents; --"
    f = IncidentFilter(domain=hostile, detector="velocity_burst", status="open",
                       entity_id="card-1", since=since, until=until)
    sql, params = queries.list_incidents(f, limit=10, offset=20)
    assert hostile not in sql and "card-1" not in sql
    assert ("WHERE domain = %s AND detector = %s AND status = %s AND entity_id = %s "
            "AND detected_at >= %s AND detected_at < %s") in sql
    assert params == [hostile, "velocity_burst", "open", "card-1", since, until, 10, 20]


def test_count_uses_the_same_filter_without_paging():
    f = IncidentFilter(domain="iot", status="resolved")
    sql, params = queries.count_incidents(f)
    assert sql.endswith("FROM incidents WHERE domain = %s AND status = %s")
    assert params == ["iot", "resolved"]


def test_pages_are_ordered_with_a_unique_tie_breaker():
    sql, _ = queries.list_incidents(IncidentFilter(), limit=5, offset=5)
    assert "ORDER BY detected_at DESC, incident_key LIMIT %s OFFSET %s" in sql


@pytest.mark.parametrize(("target", "allowed_from"), [
    ("acknowledged", ["open", "acknowledged"]),
    ("resolved", ["open", "acknowledged", "resolved"]),
])
def test_status_changes_only_from_allowed_states(target, allowed_from):
    sql, params = queries.set_status("k'1", target)
    assert "k'1" not in sql
    assert params == [target, target, "k'1", allowed_from]
    assert "status_changed_at = CASE WHEN status = %s THEN status_changed_at ELSE now() END" in sql


def test_incidents_over_time_groups_only_by_known_columns():
    sql, params = queries.incidents_over_time("detector", timedelta(minutes=15),
                                              timedelta(seconds=30))
    assert "detector AS key" in sql and params == [timedelta(seconds=30), timedelta(minutes=15)]
    with pytest.raises(ValueError):
        queries.incidents_over_time("entity_id; --", timedelta(minutes=1), timedelta(seconds=1))
