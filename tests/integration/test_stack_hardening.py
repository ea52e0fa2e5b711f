"""The running stack against hostile surroundings: what it exposes, what it leaks, and a crash.

The restart test kills the session's Postgres: it runs last in this file and returns only once
every service is healthy again, so later tests find the stack as they expect it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from patternalarm import db, secrets
from patternalarm.services import VENV_BIN, Stack, http_status
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def stack_pids(cfg) -> dict[str, set[int]]:
    """Every process of every service (watchdog, service, its children), by service."""
    services = Stack(cfg)
    return {spec.name: {p.pid for p in services.supervisor._group_members(spec.name)}
            for spec in services.specs()}


def test_no_listener_on_every_interface(stack):
    pids = stack_pids(stack)
    listening: dict[str, list[tuple[str, int]]] = {name: [] for name in pids}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN:
            continue
        for name, members in pids.items():
            if conn.pid in members:
                listening[name].append((conn.laddr.ip, conn.laddr.port))
    wildcard = {name: addrs for name, addrs in listening.items()
                if any(ip in ("0.0.0.0", "::") for ip, _ in addrs)}
    assert wildcard == {}
    # Not vacuous: every service was seen listening, on the configured host and port.
    expected = {"postgres": stack.postgres_port, "broker": stack.broker_port,
                "mlflow": stack.mlflow_port, "airflow-scheduler":
                stack.airflow_scheduler_health_port, "airflow-webserver": stack.airflow_port,
                "api": stack.api_port}
    for name, port in expected.items():
        assert (stack.bind_host, port) in listening[name], (name, listening[name])


def test_no_secret_on_a_command_line_or_in_a_file(stack):
    values = list(secrets.load(stack).values())
    on_command_lines = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if any(v in line for v in values):
            on_command_lines.append(proc.info["pid"])
    assert on_command_lines == []
    keys_file = secrets.path(stack)
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    needles = [v.encode() for v in values]
    in_files = []
    for root, _dirs, files in os.walk(stack.var_dir):
        for name in files:
            path = os.path.join(root, name)
            if path == str(keys_file) or not os.path.isfile(path):  # sockets, pipes
                continue
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                if any(n in f.read() for n in needles):
                    in_files.append(path)
    assert in_files == []
    # Nor a key of Airflow's own making: its generated config file would hold one.
    assert "secret_key" not in (stack.var_dir / "airflow" / "airflow.cfg").read_text()


def test_killed_postgres_is_restarted_and_the_app_recovers(stack):
    services = Stack(stack)
    api_health = f"http://{stack.bind_host}:{stack.api_port}/health"
    assert http_status(api_health) == 200
    postgres = services.supervisor.process("postgres")
    killed_at = time.monotonic()
    os.kill(postgres.pid, signal.SIGKILL)

    def app_db_answers() -> bool:
        try:
            with contextlib.closing(db.connect(stack, timeout_s=2)) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM schema_migrations")
                return cur.fetchone()[0] > 0
        except ConnectionError:
            return False

    wait_until(lambda: services.supervisor.process("postgres") not in (None, postgres),
               timeout_s=30)
    wait_until(app_db_answers, timeout_s=60)
    db_back_s = time.monotonic() - killed_at
    shown = subprocess.run([str(VENV_BIN / "patternalarm"), "status"], capture_output=True,
                           text=True).stdout
    assert "postgres: restarted 1x, last exit: killed by SIGKILL" in shown
    rows = json.loads(subprocess.run([str(VENV_BIN / "patternalarm"), "status", "--json"],
                                     capture_output=True, text=True).stdout)["services"]
    assert next(r for r in rows if r["name"] == "postgres")["restarts"] == 1
    wait_until(lambda: http_status(api_health) == 200, timeout_s=60)
    api_back_s = time.monotonic() - killed_at
    # Airflow's scheduler may have died of the outage: its watchdog brings it back too.
    wait_until(lambda: all(s.healthy for s in services.status()), timeout_s=240)
    print(f"postgres kill -9: app DB back after {db_back_s:.1f}s, API healthy after "
          f"{api_back_s:.1f}s, whole stack healthy after {time.monotonic() - killed_at:.1f}s; "
          + ", ".join(f"{s.name} restarts={s.restarts}" for s in services.status()))
