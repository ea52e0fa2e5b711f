"""Which processes the stack runs for a configuration, and the errors for unreachable services."""

import json
import os

import pytest

from patternalarm.services import Stack, airflow_env
from patternalarm.settings import load

pytestmark = pytest.mark.usefixtures("clean_settings_env")


def names(cfg):
    return [spec.name for spec in Stack(cfg).specs()]


def test_default_stack_is_all_embedded_in_dependency_order():
    assert names(load()) == ["postgres", "broker", "mlflow", "airflow-scheduler",
                             "airflow-webserver", "api"]


def test_durable_broker_adds_the_s3_server_before_it(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_BROKER_STORAGE", "s3")
    cfg = load()
    assert names(cfg)[1:3] == ["s3", "broker"]
    broker = next(s for s in Stack(cfg).specs() if s.name == "broker")
    assert "s3://tansu/" in broker.argv
    assert broker.env["AWS_ENDPOINT"] == f"http://127.0.0.1:{cfg.s3_port}"


def test_external_services_are_not_started(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_POSTGRES_URL", "postgresql://u:pw@db:5432/x")
    monkeypatch.setenv("PATTERNALARM_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("PATTERNALARM_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert names(load()) == ["airflow-scheduler", "airflow-webserver", "api"]


def test_unreachable_external_postgres_names_service_and_masks_password(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_POSTGRES_URL", "postgresql://app:s3cret@127.0.0.1:1/x")
    with pytest.raises(ConnectionError) as err:
        Stack(load()).up()
    message = str(err.value)
    assert "PostgreSQL at postgresql://app:***@127.0.0.1:1/postgres" in message
    assert "s3cret" not in message


def test_airflow_gets_spark_connection_and_generated_secrets(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_SPARK_MASTER", "spark://master:7077")
    cfg = load()
    env = airflow_env(cfg)
    assert json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"])["host"] == "spark://master:7077"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    # Generated per install, stable across calls, never a shipped default.
    assert env["AIRFLOW__CORE__FERNET_KEY"] == airflow_env(cfg)["AIRFLOW__CORE__FERNET_KEY"]
    other = load(var_dir=cfg.var_dir.parent / "other")
    assert airflow_env(other)["AIRFLOW__CORE__FERNET_KEY"] != env["AIRFLOW__CORE__FERNET_KEY"]
    assert oct((cfg.var_dir / "secrets.json").stat().st_mode & 0o777) == "0o600"


def test_no_password_on_service_command_lines_or_in_urls(monkeypatch):
    from patternalarm import secrets

    cfg = load()
    password = secrets.load(cfg)["postgres_password"]
    specs = {spec.name: spec for spec in Stack(cfg).specs()}
    for spec in specs.values():
        assert not any(password in arg for arg in spec.argv), spec.name
    mlflow = specs["mlflow"]
    backend = mlflow.argv[mlflow.argv.index("--backend-store-uri") + 1]
    assert backend == f"postgresql://postgres@127.0.0.1:{cfg.postgres_port}/mlflow"
    assert mlflow.env["PGPASSWORD"] == password
    env = airflow_env(cfg)
    assert password not in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["PGPASSWORD"] == password


def test_external_postgres_password_travels_outside_the_url(monkeypatch):
    from patternalarm.services import libpq_target

    monkeypatch.setenv("PATTERNALARM_POSTGRES_URL", "postgresql://app:p%40ss@db:5432/x")
    url, env = libpq_target(load(), "mlflow", driver="postgresql+psycopg2")
    assert url == "postgresql+psycopg2://app@db:5432/mlflow"
    assert env == {"PGPASSWORD": "p@ss"}


def test_airflow_listeners_bind_the_configured_host(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_BIND_HOST", "127.0.0.2")
    cfg = load()
    env = airflow_env(cfg)
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.2"
    assert env["AIRFLOW__WEBSERVER__WEB_SERVER_HOST"] == "127.0.0.2"
    scheduler = next(s for s in Stack(cfg).specs() if s.name == "airflow-scheduler")
    # Airflow 2.8's task-log server always binds every interface: it must not run.
    assert "--skip-serve-logs" in scheduler.argv


def test_every_embedded_service_restarts_but_the_stream_job_does_not():
    from patternalarm.services import stream_spec

    cfg = load()
    assert all(spec.restart for spec in Stack(cfg).specs())
    assert not stream_spec(cfg).restart


def test_secrets_file_is_private_even_under_a_permissive_umask():
    from patternalarm import secrets

    cfg = load()
    old = os.umask(0)
    try:
        secrets.load(cfg)
    finally:
        os.umask(old)
    assert oct(secrets.path(cfg).stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in secrets.path(cfg).parent.iterdir()] == ["secrets.json"]


def test_broker_memory_warns_before_it_runs_out():
    from patternalarm.services import broker_memory_warning

    gib = 2**30
    assert broker_memory_warning(2 * gib, 16 * gib, 24 * gib) is None
    assert "10.0 GiB" in broker_memory_warning(10 * gib, 12 * gib, 24 * gib)
    assert "5.0 of 24 GiB left" in broker_memory_warning(3 * gib, 5 * gib, 24 * gib)
