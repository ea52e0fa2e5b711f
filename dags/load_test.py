"""
### Load test: traffic at a rate profile through the running stream, measured

`validate_params` → `ensure_stream` → `generate` → `report`

- **ensure_stream** starts the streaming job unless it runs (query `detector`, the one the
  dashboard shows) and waits until it has caught up and gone quiet: that moment is the
  baseline, and everything the stream commits afterwards is this run's traffic. Run it on a
  stream nobody else is feeding, or the figures include their events.
- **generate** sends labelled synthetic events: `mode` MINI 5/min, NORMAL 10K/min, PEAK
  50K/min, CRISIS 100K/min per domain, or CUSTOM with `rate_per_min`; optional `spike`
  `ramp:SECONDS` or `burst:START_S:SECONDS[:FACTOR]` (×10 by default).
- **report** waits for the stream to drain, then writes a `load_runs` row: sustained
  throughput (events/min committed), p50/p99 event-to-incident latency, max lag, drain time
  (end of the schedule → lag 0), recall/precision against ground truth, and a PNG chart under
  `<var_dir>/reports/` (the dashboard shows it; its path is in the task log). The run fails
  when an event was not processed or the lag did not drain within `drain_timeout_s`.

The embedded in-memory broker keeps every event until it stops: size runs accordingly
(CRISIS for 10 minutes is 1M events per domain).
"""

from __future__ import annotations

from datetime import timedelta

from airflow import DAG
from airflow.decorators import task
from airflow.models.param import Param
from pa_airflow.defaults import DEFAULT_ARGS, DOMAIN_LIST, START
from pa_airflow.operators import GenerateOperator, ValidateParamsOperator
from pa_airflow.validation import MODES, check_load

QUERY = "detector"

with DAG(
    dag_id="patternalarm_load_test",
    description="Traffic at a rate profile through the stream; throughput, latency, quality",
    doc_md=__doc__,
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    default_args=DEFAULT_ARGS,
    tags=["patternalarm", "load"],
    render_template_as_native_obj=True,
    params={
        "mode": Param("MINI", type="string", enum=list(MODES), title="Rate mode",
                      description="events per minute per domain; CUSTOM uses rate_per_min"),
        "rate_per_min": Param(None, type=["null", "number"], minimum=1,
                              title="Rate (CUSTOM)", description="events/min per domain"),
        "domains": Param(["payments"], type="array", title="Domains",
                         items={"type": "string", "enum": DOMAIN_LIST}, minItems=1),
        "duration_s": Param(60, type="integer", minimum=1, maximum=3600,
                            title="Duration (s)", description="length of the schedule"),
        "spike": Param("", type="string", title="Spike profile",
                       description="empty, ramp:SECONDS or burst:START_S:SECONDS[:FACTOR]"),
        "drain_timeout_s": Param(300, type="integer", minimum=1, title="Drain timeout (s)",
                                 description="how long the lag may take to reach 0"),
    },
) as dag:
    checked = ValidateParamsOperator(task_id="validate_params", check=check_load)

    @task(execution_timeout=timedelta(minutes=20))
    def ensure_stream() -> str:
        from datetime import UTC, datetime

        from pa_airflow.stream import StreamJob

        from patternalarm import settings

        stream = StreamJob(settings.get(), QUERY)
        stream.ensure()
        stream.wait_idle()
        return datetime.now(UTC).isoformat()

    generate = GenerateOperator(
        task_id="generate", plan="{{ ti.xcom_pull(task_ids='validate_params') }}",
        execution_timeout=timedelta(hours=1, minutes=10))

    @task(execution_timeout=timedelta(minutes=30))
    def report(p: dict, summary: dict, since: str, run_id=None) -> dict:
        from datetime import datetime

        from airflow.exceptions import AirflowFailException
        from pa_airflow.load import report as load_report

        from patternalarm import settings

        r = load_report(settings.get(), run_id, p, summary, QUERY, datetime.fromisoformat(since))
        print(f"load run {run_id}: {r['status']}; sent {r['events_sent']}, processed "
              f"{r['processed']}, {r['throughput_per_min']} events/min, latency p50/p99 "
              f"{r['latency_p50_ms']}/{r['latency_p99_ms']} ms, max lag {r['max_lag']}, drain "
              f"{r['drain_s']} s, recall {r['recall']}, precision {r['precision']}; chart "
              f"{r['chart_path']}")
        if r["failures"]:
            raise AirflowFailException("; ".join(r["failures"]))
        return r

    since = ensure_stream()
    checked >> since >> generate
    report(checked.output, generate.output, since)
