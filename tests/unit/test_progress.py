"""The demo's stage lines and the generators' progress files, on real processes."""

import io
import json
import subprocess
import sys

import psutil
import pytest

from patternalarm.generator import RunPlan
from patternalarm.progress import GeneratorReport, Stages, combine, generator_dir, generators


def plan():
    return RunPlan(domains=("payments", "iot"), per_min=600.0, mode="CUSTOM", duration_s=60.0,
                   count=None, spike=None, seed=1, start_ms=None, entities=None,
                   anomaly_rate=0.0, late_fraction=0.0, late_max_s=1.0,
                   malformed_fraction=0.0, label_delay_s=0.0, ground_truth=False,
                   delivery_timeout_s=1.0, connect_attempts=1)


def test_each_stage_is_one_line_with_its_time_and_outcome():
    out = io.StringIO()
    stages = Stages(out)
    with stages.stage("services") as stage:
        stage.note("all healthy")
    with stages.stage("model iot") as stage:
        stage.fail("training failed", "last lines of train-iot.log:\nboom")
    with pytest.raises(RuntimeError), stages.stage("stream"):
        raise RuntimeError("no batch")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("  ✓ services") and lines[0].endswith("s  all healthy")
    assert lines[1].startswith("  ✗ model iot") and lines[1].endswith("training failed")
    assert lines[2:4] == ["last lines of train-iot.log:", "boom"]
    assert lines[4].startswith("  ✗ stream")
    assert len(lines) == 5  # not a terminal: no ticking line in between


def test_report_shows_progress_and_how_the_run_ended(tmp_path):
    report = GeneratorReport(tmp_path, plan())
    callback = combine(None, report.progress)
    callback({"elapsed_s": 30.0, "targets": {"payments": 600, "iot": 600}, "episodes": 2,
              "stats": {"payments": {"sent": 300, "errors": 1}, "iot": {"sent": 290}}})
    report.finish("finished")
    [(state, proc)] = generators(tmp_path)
    assert proc is not None and proc.pid == psutil.Process().pid
    assert (state["state"], state["sent"], state["target"], state["errors"]) == \
        ("finished", 590, 1200, 1)
    assert state["rate_per_min"] == pytest.approx(1180)
    assert state["target_rate_per_min"] == 1200


def test_a_generator_that_died_without_its_end_is_killed_and_old_ends_are_forgotten(tmp_path):
    def report_of_a_dead_process(updated_at: float):
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        created = psutil.Process(child.pid).create_time()
        child.wait()
        report = GeneratorReport(tmp_path, plan())
        report.path.unlink()
        report.state.update(pid=child.pid, create_time=created, updated_at=updated_at)
        (generator_dir(tmp_path) / f"{child.pid}.json").write_text(json.dumps(report.state))
        return child.pid

    old = report_of_a_dead_process(1.0)
    newer = report_of_a_dead_process(2.0)
    assert [(s["pid"], s["state"], p) for s, p in generators(tmp_path)] == \
        [(old, "killed", None), (newer, "killed", None)]
    GeneratorReport(tmp_path, plan())  # a new run forgets all ended runs but the newest
    assert {p.stem for p in generator_dir(tmp_path).glob("*.json")} == \
        {str(newer), str(psutil.Process().pid)}
