"""Incidents, dashboard data, health and metrics through the stack's API process (uvicorn,
started by `up`) on the stack's Postgres, written by the stream's own sink."""

from __future__ import annotations

import contextlib
import uuid

import httpx
import pytest

from patternalarm import db, secrets
from streaming.sinks import BatchMetrics, Incident, commit_batch

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def api(stack):
    base = f"http://{stack.bind_host}:{stack.api_port}"
    headers = {"X-API-Key": secrets.load(stack)["api_key"]}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def written(stack):
    """Five incidents of one test-only detector, committed as two micro-batches."""
    tag = uuid.uuid4().hex[:8]
    detector = f"test_{tag}"
    query = f"api-{tag}"
    incidents = [Incident(domain=domain, entity_id=f"e{i}-{tag}", detector=detector,
                          detector_kind="rule", window_start_ms=T0 + i, severity="medium",
                          first_event_ms=T0, last_event_ms=T0 + 1_000, event_count=i + 1,
                          evidence={"events": [f"ev-{i}"], "rule": detector})
                 for i, domain in enumerate(["payments", "payments", "iot", "gaming", "iot"])]
    with contextlib.closing(db.connect(stack)) as conn:
        commit_batch(conn, query, 0, incidents[:3], BatchMetrics(3, 10.0))
        commit_batch(conn, query, 1, incidents[3:], BatchMetrics(2, 10.0))
        yield detector, incidents
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM incidents WHERE detector = %s", (detector,))
            cur.execute("DELETE FROM stream_metrics WHERE query_name = %s", (query,))
            cur.execute("DELETE FROM stream_batches WHERE query_name = %s", (query,))


def test_health_is_ok_without_a_key(stack):
    resp = httpx.get(f"http://{stack.bind_host}:{stack.api_port}/health")
    assert resp.status_code == 200 and resp.json()["database"] is True


def test_filters_and_pages_cover_every_match_once(api, written):
    detector, incidents = written
    keys = []
    offset = 0
    while offset is not None:
        page = api.get("/incidents", params={"detector": detector, "limit": 2,
                                             "offset": offset}).json()
        assert page["total"] == 5 and len(page["items"]) <= 2
        keys += [item["incident_key"] for item in page["items"]]
        offset = page["next_offset"]
    assert sorted(keys) == sorted(i.key for i in incidents)

    iot = api.get("/incidents", params={"detector": detector, "domain": "iot"}).json()
    assert {i["entity_id"] for i in iot["items"]} == {incidents[2].entity_id,
                                                      incidents[4].entity_id}
    future = api.get("/incidents", params={"detector": detector,
                                           "since": "2100-01-01T00:00:00Z"}).json()
    assert future["total"] == 0 and future["next_offset"] is None


def test_a_hostile_filter_is_only_a_value(api, written):
    resp = api.get("/incidents", params={"detector": "x' OR '1'='1"})
    assert resp.status_code == 200 and resp.json()["total"] == 0


def test_one_incident_comes_with_its_evidence(api, written):
    _, incidents = written
    body = api.get(f"/incidents/{incidents[1].key}").json()
    assert body["evidence"] == {"events": ["ev-1"], "rule": incidents[1].detector}
    assert body["event_count"] == 2 and body["status"] == "open"
    assert api.get("/incidents/no-such-key").status_code == 404


def test_acknowledge_then_resolve_and_resolved_is_final(api, written):
    detector, incidents = written
    key = incidents[0].key
    acked = api.patch(f"/incidents/{key}", json={"status": "acknowledged"}).json()
    assert acked["status"] == "acknowledged" and acked["status_changed_at"] is not None
    again = api.patch(f"/incidents/{key}", json={"status": "acknowledged"}).json()
    assert again["status_changed_at"] == acked["status_changed_at"]  # idempotent
    resolved = api.patch(f"/incidents/{key}", json={"status": "resolved"}).json()
    assert resolved["status"] == "resolved"
    assert resolved["status_changed_at"] > acked["status_changed_at"]
    conflict = api.patch(f"/incidents/{key}", json={"status": "acknowledged"})
    assert conflict.status_code == 409 and "resolved" in conflict.json()["detail"]
    assert api.patch("/incidents/no-such-key", json={"status": "resolved"}).status_code == 404
    listed = api.get("/incidents", params={"detector": detector, "status": "resolved"}).json()
    assert [i["incident_key"] for i in listed["items"]] == [key]


def test_dashboard_data_counts_incidents_by_domain_and_detector(api, written):
    detector, _ = written
    data = api.get("/dashboard/data", params={"minutes": 5}).json()
    assert sum(data["incidents_by_detector"]["series"][detector]) == 5
    assert set(data["incidents_by_domain"]["series"]) >= {"payments", "iot", "gaming"}
    assert data["stream"]["t"] and data["now"]["events_per_s"] > 0


def test_metrics_expose_requests_by_route(api, written):
    _, incidents = written
    api.get(f"/incidents/{incidents[0].key}")
    text = api.get("/metrics").text
    assert 'pa_api_requests_total{method="GET",route="/incidents/{key}",status="200"}' in text
    assert incidents[0].key not in text
