"""DagBag integrity, in the manner of Airflow's own example-DAG tests.

Parsing must import neither pyspark nor mlflow and make no database query; every DAG needs
tags, an owner, retries, docs, a params form and a run timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from patternalarm.settings import PROJECT_ROOT

DAGS = PROJECT_ROOT / "dags"

# Runs in a clean interpreter so that modules imported by other tests cannot hide a heavy import.
# The metadata DB URL points at a closed port: any query at parse time fails the load.
_PARSE = """
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {d.dag_id: {"tags": d.tags, "owner": d.owner,
                        "retries": [t.retries for t in d.tasks], "doc_md": d.doc_md,
                        "params": {k: p.schema for k, p in d.params.items()},
                        "dagrun_timeout": d.dagrun_timeout is not None,
                        "first_task": sorted(t.task_id for t in d.roots)}
             for d in bag.dags.values()},
    "heavy": sorted(m for m in ("pyspark", "mlflow", "great_expectations", "pandas", "sklearn")
                    if m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://nobody@127.0.0.1:1/none",
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}
    out = subprocess.run([sys.executable, "-c", _PARSE, str(DAGS)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def dag_files():
    return sorted(p.name for p in DAGS.glob("*.py") if not p.name.startswith("_"))


def test_no_import_errors(parsed):
    assert parsed["errors"] == {}


def test_every_dag_file_yields_a_dag(parsed):
    assert len(parsed["dags"]) >= len(dag_files())


def test_parsing_imports_no_heavy_library(parsed):
    assert parsed["heavy"] == []


def test_dags_have_tags_owner_and_retries(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert dag["owner"] and dag["owner"] != "airflow", f"{dag_id} has no owner"
        assert all(r >= 1 for r in dag["retries"]), f"{dag_id} has a task without retries"


def test_dags_have_docs_params_form_and_timeouts(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["doc_md"] and len(dag["doc_md"]) > 200, f"{dag_id} has no doc_md"
        assert dag["dagrun_timeout"], f"{dag_id} has no dagrun_timeout"
        assert dag["params"], f"{dag_id} has no params"
        # A form field needs a type; choices and bounds come with it where they apply.
        assert all(schema.get("type") for schema in dag["params"].values()), dag_id


def test_params_are_checked_first(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["first_task"] == ["validate_params"], dag_id
