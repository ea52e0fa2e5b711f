"""DagBag integrity, in the manner of Airflow's own example-DAG tests.

Parsing must import neither pyspark nor mlflow and make no database query; every DAG needs
tags, an owner and retries.
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
                        "retries": [t.retries for t in d.tasks]} for d in bag.dags.values()},
    "heavy": sorted(m for m in ("pyspark", "mlflow", "great_expectations") if m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://nobody@127.0.0.1:1/none",
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
