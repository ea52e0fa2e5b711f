"""The embedded stack for real: broker end offsets, migrations, MLflow, Airflow."""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from patternalarm import db, kafka, secrets
from patternalarm.services import Stack
from tests.conftest import produce_in_batches

pytestmark = pytest.mark.integration


def test_topics_from_settings_exist(stack):
    topics = kafka.admin(stack).list_topics(timeout=10).topics
    for name in stack.all_topics:
        assert len(topics[name].partitions) == stack.topic_partitions


def test_end_offsets_are_the_log_end_even_with_multi_record_batches(stack):
    topic = f"test.offsets.{uuid.uuid4().hex[:6]}"
    kafka.ensure_topics(stack, [topic], partitions=3)
    acked = produce_in_batches(stack, topic, 2_500)
    # Tansu's ListOffsets answers the last batch's base offset + 1: it must not leak through.
    ends = kafka.end_offsets(stack, [topic])
    assert ends == {(topic, p): acked.get(p, 0) for p in range(3)}
    assert sum(ends.values()) == 2_500
    more = produce_in_batches(stack, topic, 700)
    ends = kafka.end_offsets(stack, [topic])
    assert sum(ends.values()) == 3_200
    assert all(ends[(topic, p)] == acked.get(p, 0) + more.get(p, 0) for p in range(3))


def test_consumer_lag_counts_what_a_group_has_not_committed(stack):
    topic = f"test.lag.{uuid.uuid4().hex[:6]}"
    kafka.ensure_topics(stack, [topic], partitions=2)
    acked = produce_in_batches(stack, topic, 1_000)
    group = f"test-group-{uuid.uuid4().hex[:6]}"
    reader = kafka.consumer(stack, group)
    try:
        committed = [TopicPartition(topic, p, acked[p] // 4) for p in range(2)]
        reader.commit(offsets=committed, asynchronous=False)
    finally:
        reader.close()
    lag = kafka.consumer_lag(stack, group, [topic])
    assert lag == {(topic, p): acked[p] - acked[p] // 4 for p in range(2)}


def test_produce_and_consume_round_trip(stack):
    topic = f"test.roundtrip.{uuid.uuid4().hex[:6]}"
    kafka.ensure_topics(stack, [topic], partitions=2)
    produce_in_batches(stack, topic, 300)
    reader = kafka.consumer(stack, f"rt-{uuid.uuid4().hex[:6]}",
                            **{"auto.offset.reset": "earliest"})
    reader.subscribe([topic])
    seen = 0
    try:
        for _ in range(200):
            seen += sum(1 for m in reader.consume(500, 0.5) if m.error() is None)
            if seen >= 300:
                break
    finally:
        reader.close()
    assert seen == 300


def test_migrations_applied_once_and_rerun_is_a_noop(stack):
    with contextlib.closing(db.connect(stack)) as conn:
        assert db.migrate(conn) == []
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM schema_migrations ORDER BY version")
            assert [r[0] for r in cur.fetchall()] == [m.path.name for m in db.discover()]
            cur.execute("""SELECT table_name FROM information_schema.tables
                           WHERE table_schema = 'public'""")
            tables = {r[0] for r in cur.fetchall()}
    assert {"incidents", "stream_batches", "stream_metrics", "ground_truth", "load_runs",
            "chaos_runs"} <= tables


def test_incident_key_merges_retriggers(stack):
    key = f"payments:card-1:velocity:{uuid.uuid4().hex[:6]}"
    upsert = """
        INSERT INTO incidents (incident_key, domain, entity_id, detector, detector_kind,
                               window_start, severity, first_event_time, last_event_time)
        VALUES (%s, 'payments', 'card-1', 'velocity', 'rule', now(), 'high', now(), now())
        ON CONFLICT (incident_key) DO UPDATE
           SET trigger_count = incidents.trigger_count + 1, last_seen_at = now()"""
    with contextlib.closing(db.connect(stack)) as conn, conn, conn.cursor() as cur:
        cur.execute(upsert, (key,))
        cur.execute(upsert, (key,))
        cur.execute("SELECT count(*), max(trigger_count) FROM incidents WHERE incident_key = %s",
                    (key,))
        assert cur.fetchone() == (1, 2)


def test_databases_for_airflow_and_mlflow_exist(stack):
    with contextlib.closing(db.connect(stack, "postgres")) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        names = {r[0] for r in cur.fetchall()}
    assert {stack.app_db, stack.airflow_db, stack.mlflow_db} <= names


def test_mlflow_server_logs_a_run_to_postgres(stack, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(stack.tracking_uri)
    experiment = f"foundation-{uuid.uuid4().hex[:6]}"
    mlflow.set_experiment(experiment)
    (tmp_path / "note.txt").write_text("artifact through the tracking server")
    with mlflow.start_run() as run:
        mlflow.log_param("alpha", 0.5)
        mlflow.log_metric("pr_auc", 0.87)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    fetched = mlflow.get_run(run.info.run_id)
    assert fetched.data.params["alpha"] == "0.5"
    assert fetched.data.metrics["pr_auc"] == pytest.approx(0.87)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="note.txt",
                                                dst_path=str(tmp_path / "dl"))
    assert Path(local).read_text() == "artifact through the tracking server"
    # Stored in the embedded Postgres, not a local file store.
    with contextlib.closing(db.connect(stack, stack.mlflow_db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone()[0] == 1


def airflow_api(cfg, path: str) -> dict:
    password = secrets.load(cfg)["airflow_admin_password"]
    token = base64.b64encode(f"{cfg.airflow_admin_user}:{password}".encode()).decode()
    request = urllib.request.Request(f"http://{cfg.bind_host}:{cfg.airflow_port}/api/v1/{path}",
                                     headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def test_airflow_scheduler_and_api_healthy_with_generated_admin(stack):
    health = airflow_api(stack, "health")
    assert health["metadatabase"]["status"] == "healthy"
    assert health["scheduler"]["status"] == "healthy"
    assert airflow_api(stack, "importErrors")["total_entries"] == 0


def test_airflow_rejects_a_wrong_password(stack):
    import urllib.error

    token = base64.b64encode(f"{stack.airflow_admin_user}:admin".encode()).decode()
    request = urllib.request.Request(
        f"http://{stack.bind_host}:{stack.airflow_port}/api/v1/dags",
        headers={"Authorization": f"Basic {token}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 401


def test_second_up_is_a_noop_and_status_is_healthy(stack):
    services = Stack(stack)
    before = {s.name: s.pid for s in services.status()}
    services.up()
    after = services.status()
    assert all(s.healthy for s in after)
    assert {s.name: s.pid for s in after} == before
