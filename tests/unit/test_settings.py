
import pytest

from patternalarm import settings as settings_mod
from patternalarm.settings import SettingsError, load, mask_url, masked

pytestmark = pytest.mark.usefixtures("clean_settings_env")


def test_defaults_are_embedded_services():
    cfg = load()
    assert cfg.embedded_postgres and cfg.embedded_kafka and cfg.embedded_mlflow
    assert cfg.bootstrap_servers == f"127.0.0.1:{cfg.broker_port}"
    assert cfg.tracking_uri == f"http://127.0.0.1:{cfg.mlflow_port}"


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_BROKER_PORT", "29092")
    monkeypatch.setenv("PATTERNALARM_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    cfg = load()
    assert cfg.broker_port == 29092
    assert not cfg.embedded_kafka
    assert cfg.bootstrap_servers == "kafka-1:9092,kafka-2:9092"


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("PATTERNALARM_MLFLOW_PORT=6123\n")
    assert load().mlflow_port == 6123


@pytest.mark.parametrize(("key", "value"), [
    ("PATTERNALARM_POSTGRES_PORT", "99999"),
    ("PATTERNALARM_BROKER_PORT", "not-a-port"),
    ("PATTERNALARM_BROKER_STORAGE", "disk"),
    ("PATTERNALARM_POSTGRES_URL", "mysql://x@y/z"),
    ("PATTERNALARM_TOPIC_PARTITIONS", "0"),
])
def test_invalid_value_names_the_key(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as err:
        load()
    assert key in str(err.value)
    assert value in str(err.value)


def test_cli_exits_2_naming_the_bad_key(monkeypatch, capsys):
    from patternalarm.cli import main

    monkeypatch.setenv("PATTERNALARM_AIRFLOW_PORT", "-1")
    settings_mod.get.cache_clear()
    try:
        assert main(["config"]) == 2
    finally:
        settings_mod.get.cache_clear()
    assert "PATTERNALARM_AIRFLOW_PORT" in capsys.readouterr().err


def test_cli_bad_arguments_print_usage(capsys):
    from patternalarm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2
    assert "usage: patternalarm" in capsys.readouterr().err


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_POSTGRES_URL", "postgresql://app:hunter2@db.internal:5432/x")
    shown = masked(load())
    assert "hunter2" not in "".join(shown.values())
    assert shown["PATTERNALARM_POSTGRES_URL"] == "postgresql://app:***@db.internal:5432/x"


def test_mask_url_leaves_passwordless_urls_alone():
    assert mask_url("http://127.0.0.1:5500") == "http://127.0.0.1:5500"


def test_topic_names_derive_from_prefix(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_TOPIC_PREFIX", "acme")
    cfg = load()
    assert cfg.events_topic("iot") == "acme.events.iot"
    assert set(cfg.all_topics) == {"acme.events.payments", "acme.events.gaming",
                                   "acme.events.iot", "acme.labels", "acme.dlq"}


def test_every_setting_is_documented_in_the_readme():
    from patternalarm.settings import PROJECT_ROOT, Settings, env_key

    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [env_key(f) for f in Settings.model_fields if f"`{env_key(f)}`" not in readme]
    assert missing == []


def test_settings_error_masks_the_password_of_a_bad_url(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_POSTGRES_URL", "mysql://app:hunter2@db/x")
    with pytest.raises(SettingsError) as err:
        load()
    assert "hunter2" not in str(err.value)
    assert "mysql://app:***@db/x" in str(err.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:p%40ss@db/x", "postgresql://app:***@db/x"),
    ("postgresql://db/x?user=app&password=hunter2", "postgresql://db/x?user=app&password=***"),
    ("postgresql://app:pw@[broken/x", "***"),
])
def test_mask_url_hides_encoded_query_and_unparseable_passwords(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "myhost.example"])
def test_network_bind_with_unauthenticated_services_needs_consent(monkeypatch, host):
    monkeypatch.setenv("PATTERNALARM_BIND_HOST", host)
    with pytest.raises(SettingsError) as err:
        load()
    message = str(err.value)
    assert "PATTERNALARM_ALLOW_UNAUTHENTICATED_NETWORK" in message
    assert f"PATTERNALARM_BIND_HOST={host}" in message
    assert "Kafka broker" in message and "MLflow server" in message
    monkeypatch.setenv("PATTERNALARM_ALLOW_UNAUTHENTICATED_NETWORK", "true")
    assert load().bind_host == host


def test_network_bind_names_the_s3_server_and_spares_external_services(monkeypatch):
    monkeypatch.setenv("PATTERNALARM_BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("PATTERNALARM_BROKER_STORAGE", "s3")
    with pytest.raises(SettingsError, match="S3 server"):
        load()
    monkeypatch.setenv("PATTERNALARM_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("PATTERNALARM_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert load().bind_host == "0.0.0.0"  # what remains (Postgres, Airflow, API) authenticates


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_bind_needs_no_consent(monkeypatch, host):
    monkeypatch.setenv("PATTERNALARM_BIND_HOST", host)
    assert load().bind_host == host
