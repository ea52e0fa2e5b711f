"""The expectation suites in models/expectations/: placeholders, and agreement with the features."""

from __future__ import annotations

import json

import pytest

from models import validation
from models.features import FEATURES


def load(name: str) -> dict:
    return json.loads((validation.SUITES_DIR / f"{name}.json").read_text())


def test_placeholders_become_the_job_columns():
    suite = validation.expand(load("training"), "is_fraud", "ts", ["a", "b"])
    columns = [e["kwargs"].get("column") for e in suite["expectations"]]
    assert not any(c and c.startswith("$") for c in columns)
    per_feature = sum(1 for e in load("training")["expectations"]
                      if e["kwargs"].get("column") == "$feature")
    assert columns.count("a") == columns.count("b") == per_feature
    assert "is_fraud" in columns and "ts" in columns


@pytest.mark.parametrize("domain", sorted(FEATURES))
def test_domain_suite_names_only_that_domains_features(domain):
    suite = load(domain)
    assert suite["meta"]["version"] >= 1
    assert {e["kwargs"]["column"] for e in suite["expectations"]} <= set(FEATURES[domain])
    assert validation.suite_paths(domain)[-1].name == f"{domain}.json"


@pytest.mark.parametrize("name", ["training", *sorted(FEATURES)])
def test_suites_are_valid_great_expectations_suites(name):
    from great_expectations.core import ExpectationSuite

    suite = validation.expand(load(name), "label", "event_time", ["x"])
    assert len(ExpectationSuite(**suite).expectations) == len(suite["expectations"])
