"""How `demo` follows the one bootstrap training job: a domain's stage ends on its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

from patternalarm.cli import _model_result


def job(tmp_path, script: str):
    log = tmp_path / "train-bootstrap.log"
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", script], stdout=out,
                                stderr=subprocess.STDOUT), log


def test_a_domain_is_done_when_its_line_is_printed_while_the_job_runs_on(tmp_path):
    line = json.dumps({"domain": "payments", "version": "1", "pr_auc": 0.9})
    running, log = job(tmp_path, f"import time; print('{{not json'); print({line!r}, "
                                 "flush=True); time.sleep(30)")
    try:
        assert _model_result(running, log, "payments")["version"] == "1"
        assert running.poll() is None
    finally:
        running.kill()
        running.wait()


def test_a_job_that_ends_without_the_domain_is_a_failure(tmp_path):
    failed, log = job(tmp_path, "import sys; print('{\"domain\": \"iot\"}'); sys.exit(3)")
    assert _model_result(failed, log, "gaming") == {"error": "exit 3 before its result"}
    assert _model_result(failed, log, "iot") == {"domain": "iot"}
