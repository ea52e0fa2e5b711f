"""Great Expectations gate on a training set, before any training.

Suites are versioned JSON files in ``models/expectations/`` in GX's own suite format. The
generic suite ``training.json`` holds the table- and label-level expectations; its column
placeholders ``$label`` and ``$time`` name the job's label and time columns, and every
expectation on ``$feature`` is repeated for each feature column, so any labelled file gets
per-feature checks derived from its columns. A domain may add ``<domain>.json`` with real
column names (ranges of its features), validated together with the generic suite.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
from dataclasses import dataclass
from importlib.resources.abc import Traversable

from pyspark.sql import DataFrame

# A resource, not a path beside __file__: on a cluster the driver imports this module from the
# shipped code zip (patternalarm/shipping.py).
SUITES_DIR = importlib.resources.files(__package__) / "expectations"
GENERIC_SUITE = "training"


@dataclass(frozen=True)
class GateResult:
    success: bool
    suite_versions: dict[str, int]
    failures: list[str]  # one readable line per failed expectation
    report: dict         # GX's full validation results, one entry per suite


def suite_paths(domain: str | None) -> list[Traversable]:
    paths = [SUITES_DIR / f"{GENERIC_SUITE}.json"]
    if domain and (SUITES_DIR / f"{domain}.json").exists():
        paths.append(SUITES_DIR / f"{domain}.json")
    return paths


def expand(suite: dict, label: str, time_col: str, features: list[str]) -> dict:
    """The suite with placeholders replaced; ``$feature`` expectations repeated per feature."""
    names = {"$label": [label], "$time": [time_col], "$feature": features}
    expanded = []
    for expectation in suite["expectations"]:
        column = expectation.get("kwargs", {}).get("column")
        for name in names.get(column, [column]):
            concrete = copy.deepcopy(expectation)
            if column is not None:
                concrete["kwargs"]["column"] = name
            expanded.append(concrete)
    return {**suite, "expectations": expanded}


def _failure_line(result: dict) -> str:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    observed = {k: v for k, v in (result.get("result") or {}).items()
                if k in ("observed_value", "unexpected_count", "unexpected_percent",
                         "partial_missing_list")}
    if result.get("exception_info", {}).get("raised_exception"):
        observed["exception"] = result["exception_info"]["exception_message"]
    return f"{config['type']} {kwargs} -> {observed}"


def validate(df: DataFrame, label: str, time_col: str, features: list[str],
             domain: str | None = None) -> GateResult:
    """Run every applicable suite on ``df`` (a Spark DataFrame) with an ephemeral GX context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.core import ExpectationSuite
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Progress bars would fill a job's log with carriage-return noise.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_spark("training")
             .add_dataframe_asset("rows")
             .add_batch_definition_whole_dataframe("all")
             .get_batch(batch_parameters={"dataframe": df}))
    success, versions, failures, report = True, {}, [], {}
    for path in suite_paths(domain):
        raw = json.loads(path.read_text())
        suite = expand(raw, label, time_col, features)
        versions[suite["name"]] = int(raw.get("meta", {}).get("version", 0))
        result = batch.validate(ExpectationSuite(**suite)).to_json_dict()
        report[suite["name"]] = result
        success = success and bool(result["success"])
        failures += [_failure_line(r) for r in result["results"] if not r["success"]]
    return GateResult(success, versions, failures, report)
