"""
### Chaos: faults under traffic, each ending in a measured verdict

`validate_params` → `scenario_names` → `scenario` (one mapped task per scenario, one at a
time) → `judge`

Each scenario: **baseline** (the stream runs and is idle) → `duration_s` of traffic at
`rate_per_min` with episodes at `anomaly_rate`, from entities the stream has never seen →
**inject** once a committed batch holds the scenario's own events (and a third of the way in at
the earliest) → **recover** (a stream the fault killed is restarted from its checkpoint) →
**verify**, written to `chaos_runs` with what was really injected and the batch ids and log end
offsets just before and after it:

| scenario | fault |
|---|---|
| kill_driver | kill -9 of the Spark driver, restart from the checkpoint |
| broker_restart | stop and start the embedded broker |
| postgres_outage | stop the embedded PostgreSQL for `outage_s`, then start it |
| poison_flood | `poison_count` malformed messages |
| spike | the traffic bursts ×10 for a third of the run |

Verify compares the run with a reference computed offline from the events the generator sent,
with the stream's feature engine, rules and champion version (`models/reference.py`). A
scenario fails, naming the reason (`details.reasons`), when an event sent was neither
processed nor dropped as late (`events_lost`), was processed twice, when the watermark dropped
more events than the generator made late, when dead letters differ from the malformed messages
sent, when an incident is missing, extra, duplicated (event or trigger count above the
reference's) or short of events, when the stream did not recover within `recovery_bound_s`, or
when the fault hit no traffic of the scenario. The one tolerated loss is an in-memory broker
restart's: the lost events and the incidents they explain are named in `details.notes`, and
the rest must match the reference over the events processed (`PATTERNALARM_BROKER_STORAGE=s3`
loses nothing). IoT `silence` incidents come from watermark timers: reported apart
(`details.timer_incidents`), not judged. `judge` fails the run when any scenario failed.

Chaos needs the stream to itself (other traffic would be counted as the run's). A Postgres
outage also takes Airflow's metadata database down for its duration: keep `outage_s` short.
Airflow's scheduler shuts down when its database goes away, once the running task (this one)
ends; on the embedded stack the scenario leaves a detached `python -m patternalarm.heal`
(`injected.healer_pid`, log `var/log/heal.log`) that starts the services again then.
"""

from __future__ import annotations

from datetime import timedelta

from airflow import DAG
from airflow.decorators import task
from airflow.models.param import Param
from pa_airflow.defaults import DEFAULT_ARGS, DOMAIN_LIST, START
from pa_airflow.operators import ValidateParamsOperator
from pa_airflow.validation import SCENARIOS, check_chaos

with DAG(
    dag_id="patternalarm_chaos",
    description="Faults under traffic (driver kill, broker restart, Postgres outage, poison, "
                "spike), each with a measured verdict",
    doc_md=__doc__,
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    default_args=DEFAULT_ARGS,
    tags=["patternalarm", "chaos"],
    params={
        "scenarios": Param(list(SCENARIOS), type="array", title="Scenarios",
                           items={"type": "string", "enum": list(SCENARIOS)}, minItems=1),
        "domains": Param(["payments"], type="array", title="Domains",
                         items={"type": "string", "enum": DOMAIN_LIST}, minItems=1),
        "rate_per_min": Param(3000, type="number", minimum=1, title="Rate",
                              description="background traffic, events/min per domain"),
        "duration_s": Param(60, type="integer", minimum=6, maximum=600,
                            title="Traffic per scenario (s)"),
        "outage_s": Param(10, type="integer", minimum=1, title="Postgres outage (s)"),
        "poison_count": Param(500, type="integer", minimum=1, title="Poison messages"),
        "recovery_bound_s": Param(120, type="integer", minimum=1, title="Recovery bound (s)"),
        "drain_timeout_s": Param(300, type="integer", minimum=1, title="Drain timeout (s)"),
        "anomaly_rate": Param(0.01, type="number", minimum=0, maximum=0.5,
                              title="Anomaly rate",
                              description="episodes started per event: enough incidents in "
                                          "a short run to compare with the reference"),
        "entities": Param(None, type=["null", "integer"], minimum=1, maximum=100_000,
                          title="Entities",
                          description="per domain; empty: about one event per entity per "
                                      "minute. Fewer give each entity the history that rules "
                                      "need within a short run"),
    },
) as dag:
    checked = ValidateParamsOperator(task_id="validate_params", check=check_chaos)

    @task(max_active_tis_per_dag=1, execution_timeout=timedelta(minutes=30))
    def scenario(name: str, p: dict, run_id=None) -> dict:
        from pa_airflow.chaos import run_scenario

        from patternalarm import settings

        verdict = run_scenario(settings.get(), run_id, name, p)
        print(f"{name}: {verdict['verdict'].upper()} {verdict}")
        return verdict

    @task(trigger_rule="all_done")
    def judge(p: dict, run_id=None) -> None:
        from airflow.exceptions import AirflowFailException
        from pa_airflow.chaos import failed_scenarios

        from patternalarm import settings

        failed = failed_scenarios(settings.get(), run_id, p["scenarios"])
        if failed:
            raise AirflowFailException("invariants broken:\n  " + "\n  ".join(failed))
        print(f"all {len(p['scenarios'])} scenarios passed")

    @task
    def scenario_names(p: dict) -> list[str]:
        # Mapping needs a task's whole return value: the list alone, in the order asked.
        return p["scenarios"]

    verdicts = scenario.partial(p=checked.output).expand(name=scenario_names(checked.output))
    verdicts >> judge(checked.output)
