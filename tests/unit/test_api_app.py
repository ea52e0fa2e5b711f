"""The API's contract without services: auth, validation errors, batch limit, unavailability.

Postgres is a closed port and MLflow an empty local registry: the real failure modes, no mocks.
"""

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.schemas import MAX_BATCH
from patternalarm import secrets
from patternalarm.settings import load
from tests.conftest import free_port

FEATURES = {"value": 21.5, "spike_z": 9.1, "drift_z": 0.4, "repeat_run": 1,
            "secs_since_last": 10, "gap_ratio": 1.0, "battery_pct": 80, "history_len": 500}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return load(var_dir=root / "var", postgres_port=free_port(),
                mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def client(cfg):
    with TestClient(create_app(cfg)) as client:
        client.headers["X-API-Key"] = secrets.load(cfg)["api_key"]
        yield client


@pytest.fixture(scope="module")
def anonymous(cfg):
    with TestClient(create_app(cfg)) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/incidents"), ("GET", "/incidents/x"), ("PATCH", "/incidents/x"),
    ("POST", "/predict"), ("POST", "/predict/batch"), ("GET", "/metrics"),
    ("GET", "/dashboard/data"), ("GET", "/dashboard/load-runs/r/chart"),
])
def test_every_endpoint_but_health_needs_the_key(anonymous, method, path):
    missing = anonymous.request(method, path)
    wrong = anonymous.request(method, path, headers={"X-API-Key": "not-the-key"})
    assert missing.status_code == wrong.status_code == 401
    assert "X-API-Key" in missing.json()["detail"]


def test_health_needs_no_key_and_reports_the_database(anonymous):
    resp = anonymous.get("/health")
    # The configured Postgres port is closed: degraded, and a probe sees it from the status.
    assert resp.status_code == 503
    assert resp.json() == {"status": "degraded", "database": False,
                           "models": {"payments": None, "gaming": None, "iot": None}}


def test_the_dashboard_page_is_public_and_its_data_is_not(anonymous):
    page = anonymous.get("/")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    assert anonymous.get("/static/vendor/uPlot.iife.min.js").status_code == 200
    assert anonymous.get("/dashboard/data").status_code == 401


def test_openapi_documents_the_key_and_the_endpoints(anonymous):
    spec = anonymous.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/incidents", "/incidents/{key}",
            "/metrics", "/health"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert "security" not in spec["paths"]["/health"]["get"]


@pytest.mark.parametrize(("body", "loc", "needle"), [
    ({"features": FEATURES}, ["body", "domain"], "Field required"),
    ({"domain": "mars", "features": FEATURES}, ["body", "domain"], "payments"),
    ({"domain": "iot"}, ["body"], "exactly one of"),
    ({"domain": "iot", "features": {"value": "hot"}}, ["body", "features", "value"], "number"),
    ({"domain": "iot", "features": FEATURES, "colour": 1}, ["body", "colour"], "Extra inputs"),
    ({"domain": "iot", "events": [{"entity_id": "s-1"}]}, ["body", "events"], "event_id"),
])
def test_invalid_predict_body_is_422_with_field_errors(client, body, loc, needle):
    resp = client.post("/predict", json=body)
    assert resp.status_code == 422
    errors = resp.json()["detail"]
    assert any(e["loc"] == loc and needle in e["msg"] for e in errors), errors


def test_batch_over_the_limit_is_413(client):
    item = {"domain": "iot", "features": FEATURES}
    resp = client.post("/predict/batch", json={"items": [item] * (MAX_BATCH + 1)})
    assert resp.status_code == 413
    assert str(MAX_BATCH) in resp.json()["detail"]


def test_no_champion_is_503_saying_how_to_train(client):
    resp = client.post("/predict", json={"domain": "iot", "features": FEATURES})
    assert resp.status_code == 503
    detail = resp.json()["detail"]
    assert "patternalarm-iot" in detail and "patternalarm train --domain iot" in detail


def test_database_down_is_503_naming_postgres(client):
    resp = client.get("/incidents")
    assert resp.status_code == 503
    assert "PostgreSQL" in resp.json()["detail"] and "***" in resp.json()["detail"]


def test_incident_list_validates_paging(client):
    resp = client.get("/incidents", params={"limit": 0, "offset": -1, "status": "lost"})
    assert resp.status_code == 422
    assert {tuple(e["loc"]) for e in resp.json()["detail"]} == {
        ("query", "limit"), ("query", "offset"), ("query", "status")}


def test_patch_accepts_only_analyst_states(client):
    resp = client.patch("/incidents/k", json={"status": "open"})
    assert resp.status_code == 422


def test_metrics_count_requests_by_route_template(client):
    client.get("/incidents/some-key-1")
    client.get("/incidents/some-key-2")
    text = client.get("/metrics").text
    assert 'pa_api_requests_total{method="GET",route="/incidents/{key}",status="503"}' in text
    assert "some-key-1" not in text
    assert "pa_api_request_duration_seconds_bucket" in text
