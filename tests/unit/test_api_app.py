"""The API's contract without services: auth, validation errors, batch limit, unavailability.

Postgres is a closed port and MLflow an empty local registry: the real failure modes, no mocks.
"""

import itertools

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
    ({"domain": "iot", "events": [{"entity_id": "s-1"}]}, ["body", "events", 0, "event_id"],
     "required"),
])
def test_invalid_predict_body_is_422_with_field_errors(client, body, loc, needle):
    resp = client.post("/predict", json=body)
    assert resp.status_code == 422
    errors = resp.json()["detail"]
    assert any(e["loc"] == loc and needle in e["msg"] for e in errors), errors


def event(value: str, event_time: str = "1750000000000") -> str:
    """An iot event in the wire format, numbers spliced in as raw JSON text."""
    return ('{"event_id": "e1", "domain": "iot", "entity_id": "device-1", "event_time": '
            f'{event_time}, "schema_version": 1, "payload": {{"sensor_type": "temperature", '
            f'"value": {value}}}}}')


HUGE = "9" * 400  # an integer no float holds


@pytest.mark.parametrize(("path", "raw", "loc", "needle"), [
    ("/predict", '{"domain": "iot", "features": {"value": 1e400}}',
     ["body", "features", "value"], "finite"),
    ("/predict", f'{{"domain": "iot", "features": {{"value": {HUGE}}}}}',
     ["body", "features", "value"], "finite"),
    ("/predict/batch", f'{{"items": [{{"domain": "iot", "features": {{"value": 1}}}}, '
                       f'{{"domain": "iot", "features": {{"value": -{HUGE}}}}}]}}',
     ["body", "items", 1, "features", "value"], "finite"),
    ("/predict", f'{{"domain": "iot", "events": [{event("1e400")}]}}',
     ["body", "events", 0, "payload", "value"], "not a finite number"),
    ("/predict", f'{{"domain": "iot", "events": [{event(HUGE)}]}}',
     ["body", "events", 0, "payload", "value"], "out of double range"),
    # The contract's own bounds (patternalarm/domains/iot.py), not a copy of them.
    ("/predict", f'{{"domain": "iot", "events": [{event("2e6")}]}}',
     ["body", "events", 0, "payload", "value"], "above 1000000.0"),
    ("/predict", f'{{"domain": "iot", "events": [{event("1", event_time=HUGE)}]}}',
     ["body", "events", 0, "event_time"], "out of long range"),
    ("/predict/batch", f'{{"items": [{{"domain": "iot", "events": [{event("1")}, '
                       f'{event("1e400")}]}}]}}',
     ["body", "items", 0, "events", 1, "payload", "value"], "not a finite number"),
])
def test_numbers_out_of_range_are_422_naming_the_field(client, path, raw, loc, needle):
    resp = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    errors = resp.json()["detail"]
    assert any(e["loc"] == loc and needle in e["msg"] for e in errors), errors
    assert all("input" not in e for e in errors)  # inf is no JSON; a hostile body stays home


def test_a_field_name_the_contract_does_not_know_stays_on_the_event(client):
    hostile = event("1").replace('"payload"', '"x: y", "payload"').replace('"x: y"', '"x: y": 1')
    resp = client.post("/predict", content=f'{{"domain": "iot", "events": [{hostile}]}}')
    assert resp.status_code == 422
    assert resp.json()["detail"] == [{"type": "contract", "loc": ["body", "events", 0],
                                      "msg": "x: y: unknown field",
                                      "ctx": {"problem": "x: y: unknown field"}}]


def test_batch_over_the_limit_is_413(client):
    item = {"domain": "iot", "features": FEATURES}
    resp = client.post("/predict/batch", json={"items": [item] * (MAX_BATCH + 1)})
    assert resp.status_code == 413
    assert str(MAX_BATCH) in resp.json()["detail"]


@pytest.fixture(scope="module")
def small_bodies(cfg):
    """An app that reads at most 2 KiB of a body."""
    with TestClient(create_app(cfg.model_copy(update={"api_max_body_bytes": 2048}))) as client:
        client.headers["X-API-Key"] = secrets.load(cfg)["api_key"]
        yield client


def padded(size: int) -> bytes:
    """A /predict body of exactly `size` bytes (trailing spaces are valid JSON) that fails
    validation: what passes the limit is answered 422."""
    body = b'{"domain": "mars", "features": {}}'
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("path", ["/predict", "/predict/batch", "/incidents/k"])
def test_a_body_over_the_byte_limit_is_413_before_it_is_parsed(small_bodies, path):
    # Declared by Content-Length: refused before a byte of it is read, whatever the route.
    method = "PATCH" if path.startswith("/incidents") else "POST"
    resp = small_bodies.request(method, path, content=padded(2049))
    assert resp.status_code == 413
    assert "Too Large" in resp.text


def test_a_chunked_body_is_counted_as_it_streams_in(small_bodies):
    def chunks(sizes):
        body = padded(sum(sizes))
        for start, size in zip(itertools.accumulate([0, *sizes]), sizes, strict=False):
            yield body[start:start + size]

    over = small_bodies.post("/predict", content=chunks([1000, 1000, 49]))
    assert over.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in over.request.headers
    assert over.status_code == 413 and over.json() == {"detail": "Content Too Large"}
    # At the limit the same chunks pass through to validation: 2048 bytes is allowed.
    at_limit = small_bodies.post("/predict", content=chunks([1000, 1000, 48]))
    assert at_limit.status_code == 422 and "Content-Length" not in at_limit.request.headers


def test_no_champion_is_503_saying_how_to_train(client):
    resp = client.post("/predict", json={"domain": "iot", "features": FEATURES})
    assert resp.status_code == 503
    detail = resp.json()["detail"]
    assert "patternalarm-iot" in detail and "patternalarm train --domain iot" in detail


def test_database_down_is_503_naming_postgres(client):
    resp = client.get("/incidents")
    assert resp.status_code == 503
    assert "PostgreSQL" in resp.json()["detail"] and "***" in resp.json()["detail"]
    assert int(resp.headers["Retry-After"]) > 0


def test_incident_list_validates_paging(client):
    resp = client.get("/incidents", params={"limit": 0, "offset": -1, "status": "lost"})
    assert resp.status_code == 422
    assert {tuple(e["loc"]) for e in resp.json()["detail"]} == {
        ("query", "limit"), ("query", "offset"), ("query", "status")}


@pytest.mark.parametrize(("path", "params", "loc"), [
    # Values PostgreSQL would refuse: 422 on the field, before any connection is asked for.
    ("/incidents", {"entity_id": "a\x00b"}, ["query", "entity_id"]),
    ("/incidents", {"detector": "\x00"}, ["query", "detector"]),
    ("/incidents", {"offset": 10**30}, ["query", "offset"]),
    ("/incidents/a%00b", {}, ["path", "key"]),
    ("/dashboard/load-runs/r%00/chart", {}, ["path", "run_id"]),
])
def test_parameters_postgres_cannot_take_are_422(client, path, params, loc):
    resp = client.get(path, params=params)
    assert resp.status_code == 422
    assert [e["loc"] for e in resp.json()["detail"]] == [loc]


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
