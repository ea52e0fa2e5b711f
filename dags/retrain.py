"""
### Retrain a domain's model (daily, or on demand)

`validate_params` → `check_training_inputs` → `train` (spark-submit `spark_jobs/train_model.py`;
on a cluster master with the project's code and Python environment shipped)
→ `report_decision` → `promote_or_keep` → `promoted` | `kept`

- **train** builds the training set (source `lake`: feature rows the stream logged, labelled by
  ground truth; `bootstrap`: generator events through the same feature code), runs the
  **Great Expectations gate** (the task fails with exit code 3 and the report goes to MLflow
  when the data violates the suite), trains a Spark MLlib model, logs metrics and plots to
  MLflow, registers a version and, with `promote`, gives it the `champion` alias only if it
  beats the current champion's PR-AUC on the same holdout and, for a generated domain, its
  incident-level precision on a replay at the live anomaly rate reaches the target and is no
  worse than the champion's on the same replay (else alias `challenger`).
- **report_decision** reads that MLflow run back: both scores and the decision are in its log
  and XCom; the branch shows the outcome in the graph.

Params: `domain`, `source` (lake | bootstrap), `promote`. The daily run uses the defaults.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow import DAG
from airflow.decorators import task
from airflow.models.param import Param
from airflow.operators.empty import EmptyOperator
from pa_airflow.defaults import DEFAULT_ARGS, DOMAIN_LIST, START
from pa_airflow.operators import ValidateParamsOperator
from pa_airflow.spark import ShippedSparkSubmitOperator
from pa_airflow.validation import SOURCES, check_retrain

TRAIN_JOB = Path(__file__).resolve().parent.parent / "spark_jobs" / "train_model.py"

with DAG(
    dag_id="patternalarm_retrain",
    description="Retrain a domain's model; promote it only if it beats the champion",
    doc_md=__doc__,
    schedule="@daily",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=DEFAULT_ARGS,
    tags=["patternalarm", "ml"],
    render_template_as_native_obj=True,
    params={
        "domain": Param("payments", type="string", enum=DOMAIN_LIST, title="Domain",
                        description="whose model to retrain"),
        "source": Param("lake", type="string", enum=list(SOURCES), title="Training data",
                        description="lake: what the stream logged, labelled by ground truth; "
                                    "bootstrap: a fresh generator run"),
        "promote": Param(True, type="boolean", title="Promote",
                         description="make it champion if it beats the current one"),
    },
) as dag:
    checked = ValidateParamsOperator(task_id="validate_params", check=check_retrain)

    @task(retries=1)
    def check_training_inputs(p: dict) -> dict:
        from airflow.exceptions import AirflowFailException
        from pa_airflow.retrain import MissingInput, check_inputs

        from patternalarm import settings

        try:
            return check_inputs(settings.get(), p["domain"], p["source"])
        except MissingInput as exc:
            raise AirflowFailException(str(exc)) from None

    train = ShippedSparkSubmitOperator(
        task_id="train",
        conn_id="spark_default",
        application=str(TRAIN_JOB),
        name="patternalarm-train-{{ params.domain }}",
        application_args="{{ ti.xcom_pull(task_ids='validate_params')['train_args'] }}",
        conf={"spark.ui.showConsoleProgress": "false"},
        execution_timeout=timedelta(minutes=45),
    )

    @task
    def report_decision(p: dict, dag_run=None) -> dict:
        from pa_airflow.retrain import decision

        from patternalarm import settings

        # One run at a time (max_active_runs=1): the domain's latest training run since this DAG
        # run started is this run's.
        found = decision(settings.get(), p["domain"], dag_run.start_date)
        print(f"{p['domain']}: new PR-AUC {found['new_pr_auc']}, champion PR-AUC "
              f"{found['champion_pr_auc']} (v{found['champion_version']}); replay incident "
              f"precision new {found['replay_precision']}, champion "
              f"{found['champion_replay_precision']}, target {found['target_precision']} -> "
              f"{'PROMOTED' if found['promoted'] else 'KEPT the champion'}: {found['decision']}"
              f" (MLflow run {found['run_id']})")
        return found

    @task.branch
    def promote_or_keep(found: dict) -> str:
        return "promoted" if found["promoted"] else "kept"

    found = report_decision(checked.output)
    checked >> check_training_inputs(checked.output) >> train >> found
    promote_or_keep(found) >> [EmptyOperator(task_id="promoted"), EmptyOperator(task_id="kept")]
