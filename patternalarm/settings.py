"""Typed settings: the one place where configuration is defined.

Every value comes from the environment (prefix ``PATTERNALARM_``) or a ``.env`` file in the
working directory. An invalid value stops the program at start with the key and the reason
(see :func:`load`). Secrets that the embedded services need are not settings: they are generated
on first start and kept in the var directory (see :mod:`patternalarm.secrets`).
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "PATTERNALARM_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("payments", "gaming", "iot")

Port = Annotated[int, Field(ge=1, le=65535)]


class SettingsError(Exception):
    """A setting has an invalid value; the message names the environment key."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    # Where logs, pids, generated secrets and the embedded services' data live (git-ignored).
    var_dir: Path = PROJECT_ROOT / "var"
    bind_host: str = "127.0.0.1"
    startup_timeout_s: float = Field(180.0, gt=0)

    # PostgreSQL: embedded unless postgres_url points at a server (credentials in the URL).
    postgres_url: SecretStr | None = None
    # Below Linux's ephemeral range (32768-60999): a busy machine's outgoing connections can hold
    # any port in it for a moment, and `up` then fails with "port in use".
    postgres_port: Port = 15432
    app_db: str = "patternalarm"
    airflow_db: str = "airflow"
    mlflow_db: str = "mlflow"

    # Kafka: the embedded Tansu broker unless kafka_bootstrap_servers names a real cluster.
    kafka_bootstrap_servers: str | None = None
    broker_port: Port = 19092
    # memory: fast, keeps every message in RAM until the broker stops (see README, "Limits").
    # s3: durable, on a local disk-backed S3 server started by the project (use for chaos runs).
    broker_storage: Literal["memory", "s3"] = "memory"
    s3_port: Port = 19000
    topic_prefix: str = Field("pa", pattern=r"^[A-Za-z0-9._-]+$")
    topic_partitions: int = Field(4, ge=1, le=256)

    # MLflow: embedded tracking server unless mlflow_tracking_uri points at one.
    mlflow_tracking_uri: str | None = None
    mlflow_port: Port = 5500

    # Airflow 2.8 (LocalExecutor) on the embedded or external Postgres.
    airflow_port: Port = 8080
    airflow_scheduler_health_port: Port = 8974
    airflow_admin_user: str = "admin"

    # Spark: the master that SparkSubmitOperator and spark-submit use. Any other master than
    # local[...] gets the code and a Python environment shipped (patternalarm/cluster.py).
    spark_master: str = "local[2]"
    java_home: Path | None = None
    # Where checkpoints and the lake live (default: var_dir). On a multi-node master every node
    # must reach it: a network filesystem mounted at the same path (cluster.check_storage).
    shared_dir: Path | None = None
    # `patternalarm cluster up`: a Spark standalone master and workers on this machine.
    cluster_workers: int = Field(2, ge=1, le=16)
    cluster_worker_cores: int = Field(1, ge=1)
    cluster_worker_memory: str = Field("1g", pattern=r"^\d+[mg]$")
    cluster_master_port: Port = 17077
    cluster_ui_port: Port = 18080
    # Worker i (from 1) serves its UI on this port + i - 1.
    cluster_worker_ui_port: Port = 18081

    # The scoring API and dashboard (api/, served by uvicorn).
    api_port: Port = 8000
    # Request bodies over this many bytes are refused (413) before they are read further.
    api_max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)

    # The streaming job (streaming/job.py).
    stream_source: Literal["python", "native"] = "python"  # native: Spark's kafka format
    stream_trigger_s: float = Field(1.0, ge=0)
    stream_max_offsets_per_trigger: int = Field(200_000, ge=100)
    stream_allowed_lateness_s: int = Field(60, ge=0)
    # How far an event_time may run ahead of its broker timestamp before it is a dead letter.
    stream_max_future_skew_s: int = Field(300, ge=0)
    # State groups per domain: few, because the stateful operator pays a fixed cost per group
    # and micro-batch (measured: RESULTS, "columnar hot path"); at least the stage's tasks.
    stream_buckets: int = Field(4, ge=1, le=4096)
    # Tasks of the stateful stage; 0: one per core of the application (defaultParallelism).
    stream_shuffle_partitions: int = Field(0, ge=0, le=4096)
    # An entity with no event for this long (event time) leaves the stream's state: its
    # baselines start again if it comes back. Above the longest feature window (1 h).
    stream_entity_idle_s: int = Field(6 * 3600, ge=3600)
    stream_scorer: Literal["local", "spark"] = "local"
    stream_postgres_retry_s: float = Field(120.0, ge=0)
    model_refresh_s: float = Field(5.0, gt=0)

    # Models are judged in the world they are deployed in: the anomaly rate of live traffic
    # (episodes started per event; the generator's default) and the precision an analyst sees
    # per incident. Training replays a stream at this rate and picks the threshold for it.
    live_anomaly_rate: float = Field(0.001, gt=0, le=0.1)
    target_incident_precision: float = Field(0.9, gt=0, le=1)

    # The embedded broker, S3 server and MLflow server authenticate nobody: serving them on a
    # non-loopback BIND_HOST takes this explicit consent. Last field: its check reads the others.
    allow_unauthenticated_network: bool = False

    @field_validator("kafka_bootstrap_servers", "mlflow_tracking_uri", "shared_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("postgres_url", mode="before")
    @classmethod
    def _postgres_scheme(cls, value: object) -> object:
        if value in (None, ""):
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not text.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql://")
        return text

    @field_validator("allow_unauthenticated_network", mode="after")
    @classmethod
    def _network_exposure(cls, allowed: bool, info: ValidationInfo) -> bool:
        host = info.data.get("bind_host")
        if allowed or host is None or _is_loopback(host):
            return allowed
        exposed = []
        if info.data.get("kafka_bootstrap_servers", "") is None:
            exposed.append("Kafka broker")
            if info.data.get("broker_storage") == "s3":
                exposed.append("S3 server")
        if info.data.get("mlflow_tracking_uri", "") is None:
            exposed.append("MLflow server")
        if exposed:
            raise ValueError(
                f"{env_key('bind_host')}={host} is not a loopback address, and the embedded "
                f"{', '.join(exposed)} would serve anyone who can reach it (they have no "
                f"authentication); set {env_key('allow_unauthenticated_network')}=true to accept "
                f"that, or bind to 127.0.0.1")
        return allowed

    @field_validator("var_dir", "shared_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    # Derived names, kept here so every layer agrees on them.
    def events_topic(self, domain: str) -> str:
        return f"{self.topic_prefix}.events.{domain}"

    @property
    def labels_topic(self) -> str:
        return f"{self.topic_prefix}.labels"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.dlq"

    @property
    def all_topics(self) -> list[str]:
        return [self.events_topic(d) for d in DOMAINS] + [self.labels_topic, self.dlq_topic]

    @property
    def checkpoint_dir(self) -> Path:
        return (self.shared_dir or self.var_dir) / "checkpoints"

    @property
    def lake_dir(self) -> Path:
        return (self.shared_dir or self.var_dir) / "lake"

    @property
    def embedded_postgres(self) -> bool:
        return self.postgres_url is None

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def embedded_mlflow(self) -> bool:
        return self.mlflow_tracking_uri is None

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.bind_host}:{self.broker_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.bind_host}:{self.mlflow_port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def model_name(domain: str) -> str:
    """The registered MLflow model of a domain: one per domain, promoted by alias."""
    return f"patternalarm-{domain}"


def env_key(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load(**overrides: object) -> Settings:
    """Build settings, turning a validation error into one message per bad key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            shown = err.get("input")
            if isinstance(shown, str):
                shown = mask_url(shown)
            problems.append(f"{env_key(field)}: {err['msg']} (got {shown!r})")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems)) from None


@functools.lru_cache(maxsize=1)
def get() -> Settings:
    return load()


_PASSWORD_PARAMS = {"password", "sslpassword"}  # libpq accepts these in the query too


def mask_url(url: str) -> str:
    """Hide the password in a URL such as postgresql://user:secret@host/db or ...?password=x.

    Text that is not a URL comes back unchanged, and a URL too broken to parse comes back
    entirely masked: it may still hold a password.
    """
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "***"
    if has_password:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key in _PASSWORD_PARAMS for key, _ in query):
        parts = parts._replace(query=urlencode(
            [(k, "***" if k in _PASSWORD_PARAMS else v) for k, v in query], safe="*"))
    return urlunsplit(parts) if parts != urlsplit(url) else url


def masked(settings: Settings) -> dict[str, str]:
    """Effective values for display, with secrets and URL passwords masked."""
    shown: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        shown[env_key(name)] = "" if value is None else mask_url(str(value))
    return shown
