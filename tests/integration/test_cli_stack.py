"""The CLI on a stack of its own (own var dir and ports): `airflow` with the stack's
environment, `status` showing the stream and the generators, and `down` leaving no process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import psutil
import pytest

from patternalarm.services import VENV_BIN, traffic_spec
from patternalarm.settings import PROJECT_ROOT, env_key, load
from patternalarm.supervisor import Supervisor
from tests.conftest import _PORT_FIELDS, free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env():
    var_dir = PROJECT_ROOT / "var" / f"test-cli-{os.getpid()}"
    env = {**os.environ, env_key("var_dir"): str(var_dir), env_key("spark_master"): "local[2]"}
    env.update({env_key(f): str(free_port()) for f in _PORT_FIELDS})
    try:
        cli(env, "up", timeout=600)
        yield env
    finally:
        cli(env, "down", check=False, timeout=600)
        shutil.rmtree(var_dir, ignore_errors=True)


def cli(env, *args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run([str(VENV_BIN / "patternalarm"), *args], env=env, text=True,
                          capture_output=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"patternalarm {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def of_the_stack(var_dir: str) -> list[psutil.Process]:
    """Every process that carries this stack's var dir: everything the CLI started inherits it
    (services, watchdogs, Spark's JVM and Python workers, generator workers)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(env_key("var_dir")) == var_dir and proc.pid != os.getpid():
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_airflow_command_runs_with_the_stacks_environment(env):
    # Airflow logs its plugin set-up to stdout before the JSON document.
    out = cli(env, "airflow", "dags", "list", "--output", "json")
    dags = json.loads(out.strip().splitlines()[-1])
    assert {"patternalarm_retrain", "patternalarm_load_test", "patternalarm_chaos"} <= \
        {dag["dag_id"] for dag in dags}


def test_status_shows_stream_and_generators_and_down_leaves_nothing(env, monkeypatch):
    cfg = load(var_dir=env[env_key("var_dir")])
    # What `demo` starts, from the environment a CLI on this stack has: the traffic under a
    # watchdog and the stream; and a generator run from a script (in the test's process group).
    for key, value in env.items():
        if key.startswith("PATTERNALARM_"):
            monkeypatch.setenv(key, value)
    Supervisor(cfg.var_dir).start(traffic_spec(cfg, minutes=10))
    cli(env, "stream", "start")
    script = subprocess.Popen(
        [str(VENV_BIN / "patternalarm"), "generate", "--domain", "iot", "--mode", "CUSTOM",
         "--rate", "600", "--duration", "600", "--no-db"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status() -> dict:
        return json.loads(cli(env, "status", "--json"))

    def flowing() -> bool:
        now = status()
        return (len([g for g in now["generators"] if g["state"] == "running" and g["sent"]])
                == 2 and now["stream"]["state"] == "running"
                and (now["stream"].get("events_per_s") or 0) > 0)

    wait_until(flowing, 600)
    shown = status()
    assert shown["stream"]["last_batch_age_s"] < 120
    assert shown["stream"]["latency_p99_ms"] is not None and shown["stream"]["lag"] is not None
    assert shown["stream"]["dead_letters_last_min"] == 0
    assert {g["mode"] for g in shown["generators"]} == {"NORMAL", "CUSTOM"}
    text = cli(env, "status")
    assert "stream      running, pid" in text and "events/s (last min)" in text
    assert text.count("generator   running, pid") == 2

    started = of_the_stack(str(cfg.var_dir))
    cmdlines = [" ".join(p.cmdline()) for p in started]
    assert any("java" in c and "streaming/job.py" in c for c in cmdlines)
    assert any("multiprocessing" in c for c in cmdlines)  # generator workers
    stopped = cli(env, "down", timeout=600)
    assert "generate (pid" in stopped and "stream" in stopped and "generator" in stopped
    assert script.wait(timeout=30) is not None
    assert of_the_stack(str(cfg.var_dir)) == []
