"""Which processes the stack runs for a configuration, and the errors for unreachable services."""

import json

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
