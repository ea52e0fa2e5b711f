"""`airflow dags test` of each DAG on the embedded stack, with CI-sized params, checking the rows
and verdicts the runs leave behind. One run per DAG (the streaming job costs ~1 min a start)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from patternalarm import db
from patternalarm.services import airflow_env

pytestmark = pytest.mark.integration

AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture(scope="module", autouse=True)
def leave_the_stack_as_found(stack):
    """These runs start the shared `detector` stream, and chaos takes services down (a Postgres
    outage stops Airflow's scheduler): stop the one and bring the others back, so the tests
    after these get the stack the session started, with its CPU to themselves."""
    yield
    import psutil

    from patternalarm.services import Stack, stream_spec
    from patternalarm.supervisor import Supervisor

    # A Postgres outage leaves a detached healer behind until the scheduler recovered.
    healers = [int(pid) for (pid,) in rows(stack, """SELECT injected->>'healer_pid' FROM chaos_runs
                                                    WHERE injected ? 'healer_pid'""")]
    alive = []
    for pid in healers:
        with contextlib.suppress(psutil.NoSuchProcess):
            alive.append(psutil.Process(pid))
    psutil.wait_procs(alive, timeout=stack.startup_timeout_s)
    Supervisor(stack.var_dir).stop(stream_spec(stack), timeout_s=60)
    Stack(stack).up()


def dags_test(cfg, dag_id: str, conf: dict, timeout_s: float = 600) -> tuple[str, dict, str]:
    """Run the DAG to its end; (run state, {task_id or task_id[i]: state}, output)."""
    out = subprocess.run([AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
                         env={**os.environ, **airflow_env(cfg)}, capture_output=True, text=True,
                         timeout=timeout_s)
    with contextlib.closing(db.connect(cfg, cfg.airflow_db)) as conn, conn.cursor() as cur:
        cur.execute("""SELECT run_id, state FROM dag_run WHERE dag_id = %s
                       ORDER BY id DESC LIMIT 1""", (dag_id,))
        run_id, state = cur.fetchone() or (None, None)
        cur.execute("""SELECT task_id, map_index, state FROM task_instance
                       WHERE dag_id = %s AND run_id = %s""", (dag_id, run_id))
        tasks = {t if i < 0 else f"{t}[{i}]": s for t, i, s in cur.fetchall()}
    return state, {"run_id": run_id, **tasks}, out.stdout + out.stderr


def rows(cfg, sql: str, *args) -> list[tuple]:
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def test_bad_params_fail_the_first_task_before_any_work(stack):
    # The schema accepts it; the first task finds the spike profile unreadable.
    state, tasks, out = dags_test(stack, "patternalarm_load_test", {
        "mode": "CUSTOM", "rate_per_min": 600, "domains": ["payments"], "duration_s": 5,
        "spike": "burst:soon"})
    assert state == "failed", out[-3000:]
    assert tasks["validate_params"] == "failed"
    assert tasks["ensure_stream"] in (None, "upstream_failed")
    assert tasks["generate"] in (None, "upstream_failed")
    assert "spike profile 'burst:soon'" in out
    assert rows(stack, "SELECT 1 FROM load_runs WHERE run_id = %s", tasks["run_id"]) == []


def test_params_outside_the_form_are_refused_before_the_run(stack):
    # Unknown scenario, negative duration: the Param schema refuses them before any task.
    state, tasks, out = dags_test(stack, "patternalarm_chaos", {
        "scenarios": ["meteor_strike"], "duration_s": -5}, timeout_s=300)
    assert "meteor_strike" in out
    assert rows(stack, "SELECT 1 FROM chaos_runs WHERE scenario = 'meteor_strike'") == []


def test_load_test_writes_a_report_and_chart(stack):
    state, tasks, out = dags_test(stack, "patternalarm_load_test", {
        "mode": "CUSTOM", "rate_per_min": 3000, "domains": ["payments"], "duration_s": 20,
        "spike": "", "drain_timeout_s": 180})
    assert state == "success", out[-5000:]
    [(status, sent, throughput, max_lag, drain_s, chart, report)] = rows(
        stack, """SELECT status, events_sent, throughput_per_min, max_lag, drain_s, chart_path,
                         report FROM load_runs WHERE run_id = %s""", tasks["run_id"])
    assert status == "passed"
    assert sent == 1000 and report["processed"] == sent
    assert throughput > 0 and max_lag is not None and drain_s is not None
    assert Path(chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def stream_tail(cfg) -> str:
    """The stream's last log lines: a verdict that failed on a busy box says why."""
    from patternalarm.supervisor import Supervisor

    return "\nstream log:\n" + Supervisor(cfg.var_dir).tail("stream", 60)


CHAOS_COLUMNS = """SELECT scenario, verdict, injected, events_sent, events_lost,
                          incidents_duplicated, dead_lettered, recovery_s, details
                   FROM chaos_runs WHERE run_id = %s"""


def test_chaos_verdicts_match_what_was_injected(stack):
    state, tasks, out = dags_test(stack, "patternalarm_chaos", {
        "scenarios": ["poison_flood", "kill_driver"], "domains": ["payments"],
        "rate_per_min": 3000, "duration_s": 18, "poison_count": 200,
        "recovery_bound_s": 300, "drain_timeout_s": 240, "anomaly_rate": 0.02,
        "entities": 100})
    assert state == "success", out[-5000:] + stream_tail(stack)
    verdicts = {r[0]: r[1:] for r in rows(stack, CHAOS_COLUMNS, tasks["run_id"])}
    for name, (verdict, injected, _, _, dup, *_, details) in verdicts.items():
        assert (verdict, details["reasons"]) == ("pass", []), (name, details)
        # The fault came after a batch of the scenario's own events had committed.
        assert injected["own_batch_before"] is not None
        assert injected["before"]["latest_batch_id"] >= injected["own_batch_before"]
        assert injected["before"]["end_offsets"] and injected["after"]["end_offsets"]
        # Every incident the reference expects, no more, none counted twice.
        assert details["incidents_reference"] == details["incidents_observed"] > 0
        assert (details["incidents_missing"], details["incidents_extra"], dup,
                details["incidents_short"]) == (0, 0, 0, 0)
        assert details["events_processed"] == 900 and details["unknown_committed"] == 0
    verdict, injected, sent, lost, dup, dead, recovery, details = verdicts["poison_flood"]
    assert injected["malformed_sent"] == 200
    assert (lost, dup, dead, details["malformed_sent"]) == (0, 0, 200, 200)
    assert sent == 900
    verdict, injected, sent, lost, dup, dead, recovery, details = verdicts["kill_driver"]
    assert injected["signal"] == "SIGKILL" and injected["killed_pid"] != injected["restarted_pid"]
    assert (lost, dup, dead) == (0, 0, 0)
    assert 0 < recovery <= 300 and details["duplicated_events"] == 0


@pytest.fixture
def sink_drops_one_incident(stack):
    """A sink that loses one incident: a trigger that skips every write of the first incident
    key of a chaos entity (their numbers are far beyond the 6 digits of other traffic)."""
    ddl = """
        CREATE TABLE test_dropped_incident (incident_key text PRIMARY KEY);
        CREATE FUNCTION test_drop_one_incident() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF length(split_part(NEW.entity_id, '-', 2)) > 6 AND NEW.detector <> 'silence' THEN
                INSERT INTO test_dropped_incident SELECT NEW.incident_key
                    WHERE NOT EXISTS (SELECT 1 FROM test_dropped_incident);
                IF EXISTS (SELECT 1 FROM test_dropped_incident
                           WHERE incident_key = NEW.incident_key) THEN
                    RETURN NULL;
                END IF;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_drop_one_incident BEFORE INSERT ON incidents
            FOR EACH ROW EXECUTE FUNCTION test_drop_one_incident();"""
    with contextlib.closing(db.connect(stack)) as conn, conn, conn.cursor() as cur:
        cur.execute(ddl)
    yield
    with contextlib.closing(db.connect(stack)) as conn, conn, conn.cursor() as cur:
        cur.execute("""DROP TRIGGER test_drop_one_incident ON incidents;
                       DROP FUNCTION test_drop_one_incident();
                       DROP TABLE test_dropped_incident;""")


def test_a_lost_incident_fails_the_chaos_run_naming_it(stack, sink_drops_one_incident):
    state, tasks, out = dags_test(stack, "patternalarm_chaos", {
        "scenarios": ["poison_flood"], "domains": ["payments"], "rate_per_min": 3000,
        "duration_s": 18, "poison_count": 50, "recovery_bound_s": 300,
        "drain_timeout_s": 240, "anomaly_rate": 0.02, "entities": 100})
    (dropped,), = rows(stack, "SELECT incident_key FROM test_dropped_incident")
    assert state == "failed" and tasks["judge"] == "failed", out[-5000:]
    (verdict, *_, details), = [r[1:] for r in rows(stack, CHAOS_COLUMNS, tasks["run_id"])]
    assert (verdict, details["reasons"]) == ("fail", ["incidents_missing"]), \
        details["failures"] + [stream_tail(stack)]
    assert details["missing_keys"] == [dropped] and details["incidents_missing"] == 1
    assert f"incidents_missing: 1 ({dropped})" in out


@pytest.fixture
def iot_champion_restored(stack):
    """The registry is shared by the session: put back the champion this run may replace (a
    bootstrap-trained iot champion changes what later stream tests detect)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from patternalarm.settings import model_name

    client, name = MlflowClient(stack.tracking_uri), model_name("iot")
    try:
        before = client.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        before = None
    yield
    if before is not None:
        client.set_registered_model_alias(name, "champion", before)
    else:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model_alias(name, "champion")


def test_retrain_reports_the_decision(stack, iot_champion_restored):
    state, tasks, out = dags_test(stack, "patternalarm_retrain", {
        "domain": "iot", "source": "bootstrap", "promote": True})
    assert state == "success", out[-5000:]
    assert "new PR-AUC" in out
    assert {tasks["promoted"], tasks["kept"]} == {"success", "skipped"}


def test_chaos_service_faults_and_spike_are_measured(stack):
    # One run, three scenarios: each has its own baseline, so their figures stay apart.
    state, tasks, out = dags_test(stack, "patternalarm_chaos", {
        "scenarios": ["broker_restart", "postgres_outage", "spike"], "domains": ["payments"],
        "rate_per_min": 3000, "duration_s": 18, "outage_s": 4, "recovery_bound_s": 150,
        "drain_timeout_s": 240}, timeout_s=1200)
    verdicts = {r[0]: r[1:] for r in rows(
        stack, """SELECT scenario, verdict, injected, events_sent, events_lost,
                         incidents_duplicated, dead_lettered, recovery_s, details
                  FROM chaos_runs WHERE run_id = %s""", tasks["run_id"])}
    assert set(verdicts) == {"broker_restart", "postgres_outage", "spike"}, out[-5000:]
    assert state == "success", out[-5000:]

    verdict, injected, sent, lost, dup, dead, recovery, details = verdicts["broker_restart"]
    assert injected["service"] == "broker" and injected["storage"] == "memory"
    assert (verdict, dup, dead) == ("pass", 0, 0)
    # The memory broker drops at most what was due before its topics were back: the fault
    # came a third (6 s) into the schedule, and producers kept sending while it was down.
    due_before_topics_back = 3000 / 60 * (18 / 3 + injected["topics_back_s"] + 1)
    assert 0 <= lost <= due_before_topics_back
    assert details["processed_rows"] == sent - lost
    assert bool(lost) == bool(details["notes"])

    verdict, injected, sent, lost, dup, dead, recovery, details = verdicts["postgres_outage"]
    assert injected["service"] == "postgres" and injected["down_s"] >= 4
    assert injected["healer_pid"] > 0
    assert (verdict, lost, dup, dead) == ("pass", 0, 0, 0)
    assert sent == 900 and 0 < recovery <= 150
    # The sink waited for Postgres rather than dying of it.
    assert details["stream_restarted_by_recovery"] is False

    verdict, injected, sent, lost, dup, dead, recovery, details = verdicts["spike"]
    assert injected["factor"] == 10 and injected["peak_rate_per_min"] == 30000
    # A third of the run at ten times the rate: 300 + 3000 + 300 events.
    assert (verdict, lost, dup, dead, sent) == ("pass", 0, 0, 0, 3600)
