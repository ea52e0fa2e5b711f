"""`patternalarm status` on a stack that is not running: every section answers, none fails."""

import json
import os
import subprocess

from patternalarm.services import VENV_BIN
from tests.conftest import free_port


def test_status_of_a_stopped_stack_says_so_in_every_section(tmp_path):
    env = {**os.environ, "PATTERNALARM_VAR_DIR": str(tmp_path),
           "PATTERNALARM_POSTGRES_PORT": str(free_port())}
    run = subprocess.run([str(VENV_BIN / "patternalarm"), "status", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1  # not every service is healthy
    shown = json.loads(run.stdout)
    assert {s["name"] for s in shown["services"]} >= {"postgres", "broker", "api"}
    assert shown["stream"]["state"] == "stopped"
    assert "Connection refused" in shown["stream"]["metrics_error"]
    assert shown["generators"] == []
    text = subprocess.run([str(VENV_BIN / "patternalarm"), "status"], env=env,
                          capture_output=True, text=True, timeout=60).stdout
    assert "stream      stopped; no figures: PostgreSQL at" in text
    assert "generator   none running" in text
