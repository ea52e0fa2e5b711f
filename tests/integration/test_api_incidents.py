"""Incidents, dashboard data, health and metrics through the stack's API process (uvicorn,
started by `up`) on the stack's Postgres, written by the stream's own sink."""

from __future__ import annotations

import contextlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api.database import Database
from models.incidents import Incident
from patternalarm import db, secrets
from streaming.sinks import BatchMetrics, commit_batch
from tests.conftest import wait_until

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


def test_an_exhausted_pool_is_503_with_retry_after_and_recovers(stack, api, written):
    """Every connection of the API's pool is held by a query blocked on a table lock taken
    here, on the stack's real Postgres: the next request waits its turn, then gets 503."""
    detector, _ = written
    pool = Database(stack).max_connections  # the size the API process runs with
    with contextlib.closing(db.connect(stack)) as locker, ThreadPoolExecutor(pool) as threads:
        cur = locker.cursor()
        cur.execute("LOCK TABLE incidents IN ACCESS EXCLUSIVE MODE")
        held = [threads.submit(api.get, "/incidents", params={"detector": detector})
                for _ in range(pool)]

        def blocked() -> int:
            with contextlib.closing(db.connect(stack)) as conn, conn.cursor() as probe:
                probe.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                              "AND wait_event_type = 'Lock' AND query LIKE %s",
                              (stack.app_db, "%FROM incidents%"))
                return probe.fetchone()[0]

        wait_until(lambda: blocked() == pool, 30)
        started = time.monotonic()
        refused = api.get("/incidents", params={"detector": detector})
        waited = time.monotonic() - started
        assert refused.status_code == 503
        assert f"all {pool} connections to PostgreSQL are busy" in refused.json()["detail"]
        assert refused.headers["Retry-After"] == str(Database.BUSY_RETRY_S)
        assert waited >= Database(stack).wait_s  # it queued for a connection first
        locker.rollback()  # the lock goes: the held requests finish
        assert [f.result().status_code for f in held] == [200] * pool
    assert api.get("/incidents", params={"detector": detector}).json()["total"] == 5


def test_a_chunked_body_over_the_limit_is_413_from_the_server(stack, api):
    limit = stack.api_max_body_bytes

    def chunks():
        yield b'{"domain": "iot", "features": {'
        for _ in range(limit // 65_536 + 1):
            yield b" " * 65_536

    resp = api.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.request.headers["Transfer-Encoding"] == "chunked"
    assert resp.status_code == 413


def test_quality_scores_each_detector_against_ground_truth_in_the_window(stack, api):
    """Two episodes, and incidents of two test-only detectors: one true and one false for the
    first, one true for the second."""
    from patternalarm.generator import GroundTruth

    tag = uuid.uuid4().hex[:8]
    now = int(time.time() * 1000)
    start, end = now - 300_000, now - 240_000
    entities = [f"d{i}-{tag}" for i in range(3)]
    labels = [{"episode_id": f"ep{i}-{tag}", "run_id": f"q-{tag}", "domain": "iot",
               "entity_id": entities[i], "kind": "spike", "start_time": start,
               "end_time": end, "event_ids": [f"ev{i}-{tag}"]} for i in range(2)]
    one, two = f"test_{tag}", f"test2_{tag}"

    def found(entity: str, detector: str, at_ms: int) -> Incident:
        return Incident("iot", entity, detector, "rule", at_ms, "medium", at_ms, at_ms)

    query = f"quality-{tag}"
    with contextlib.closing(db.connect(stack)) as conn:
        GroundTruth(conn).record(labels)
        commit_batch(conn, query, 0, [found(entities[0], one, end + 60_000),
                                      found(entities[2], one, end),   # no episode: false
                                      found(entities[1], two, start)], BatchMetrics(3, 1.0))
        try:
            body = api.get("/quality", params={"minutes": 10}).json()
        finally:
            with conn, conn.cursor() as cur:
                cur.execute("DELETE FROM incidents WHERE detector IN (%s, %s)", (one, two))
                cur.execute("DELETE FROM ground_truth WHERE run_id = %s", (f"q-{tag}",))
                cur.execute("DELETE FROM stream_metrics WHERE query_name = %s", (query,))
                cur.execute("DELETE FROM stream_batches WHERE query_name = %s", (query,))
    iot = body["domains"]["iot"]
    assert body["window_minutes"] == 10
    assert (iot[one]["incidents"], iot[one]["true_incidents"], iot[one]["precision"]) == (2, 1,
                                                                                         0.5)
    assert iot[one]["detected"] == 1 and iot[two]["detected"] == 1
    assert iot[two]["precision"] == 1.0
    assert iot["all"]["episodes"] >= 2 and iot["all"]["incidents"] >= 3
    assert 0 < iot[one]["recall"] <= 0.5
