"""The demo's configuration, measured end to end: bootstrap champions trained and promoted as
`make demo` does (spark-submit of the training job with `patternalarm.cli.DEMO_TRAINING`),
then NORMAL-shaped traffic through the streaming job, every
incident (rules and model) matched to the generator's ground truth.

NORMAL is 10,000 events/min over 10,000 entities per domain at the live anomaly rate; this runs
the same shape (one event per entity per minute, the default anomaly rate) over fewer entities,
sent as fast as the broker takes it and processed in one `--available-now` run. Precision
counts every incident from the very first event, so a cold start that floods would fail it;
recall counts the episodes that start once entities have a few minutes of history (README,
"Cold start").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from patternalarm import db
from patternalarm.cli import DEMO_TRAINING, cmd_train
from patternalarm.quality import quality_by_detector
from patternalarm.settings import DOMAINS, model_name
from tests.conftest import own_topics, run_stream_available_now

# The demo's bootstrap training (one job, three models: ~2.5 min on a quiet 2-core box, three
# times that on a loaded one; Great Expectations, fit, two live-rate replays, registration per
# model) and a stream run: longer than the default 900 s.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2700)]

MINUTES = 20
ENTITIES = 2000
WARMUP = timedelta(minutes=5)
VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def champions(stack):
    """A fresh system's champions: whatever other tests promoted is set aside, the demo's
    bootstrap training runs, and the earlier aliases come back afterwards."""
    client = MlflowClient(stack.tracking_uri)
    earlier = {}
    for domain in DOMAINS:
        with contextlib.suppress(MlflowException):
            earlier[domain] = client.get_model_version_by_alias(model_name(domain),
                                                                "champion").version
            client.delete_registered_model_alias(model_name(domain), "champion")
    code = cmd_train(stack, argparse.Namespace(job_args=[*DEMO_TRAINING, "--domain",
                                                          ",".join(DOMAINS)]))
    assert code == 0, "bootstrap training failed"
    try:
        yield {d: client.get_model_version_by_alias(model_name(d), "champion").version
               for d in DOMAINS}
    finally:
        for domain in DOMAINS:
            if domain in earlier:
                client.set_registered_model_alias(model_name(domain), "champion",
                                                  earlier[domain])
            else:
                with contextlib.suppress(MlflowException):
                    client.delete_registered_model_alias(model_name(domain), "champion")


@pytest.fixture(scope="module")
def run(champions):
    cfg, env = own_topics("q")
    # Eight hours back, a time range of its own: quality counts every incident in the range,
    # and the chaos runs and CLI tests that run before this one send live traffic near now.
    start = datetime.now(UTC) - timedelta(hours=8, minutes=MINUTES + 1)
    generated = subprocess.run(
        [f"{VENV_BIN}/patternalarm", "generate", "--domain", ",".join(DOMAINS),
         "--rate", str(ENTITIES), "--entities", str(ENTITIES), "--duration",
         str(MINUTES * 60), "--seed", "1", "--start-time", str(int(start.timestamp() * 1000)),
         "--label-delay", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=900)
    assert generated.returncode == 0, generated.stderr[-3000:]
    query = f"demo-{cfg.topic_prefix}"
    run_stream_available_now(env, query)
    run_id = json.loads(generated.stdout)["run_id"]
    until = start + timedelta(minutes=MINUTES)
    with contextlib.closing(db.connect(cfg)) as conn:
        precision = quality_by_detector(conn, [run_id], list(DOMAINS), start, until)
        recall = quality_by_detector(conn, [run_id], list(DOMAINS), start + WARMUP, until)
    # The figures, whatever the verdicts (pytest -rA shows them).
    print("demo quality:", json.dumps({d: {
        "precision": {n: [q.true_incidents, q.incidents] for n, q in precision[d].items()},
        "recall_after_warmup": [recall[d]["all"].detected, recall[d]["all"].episodes],
        "recall_from_start": [precision[d]["all"].detected, precision[d]["all"].episodes]}
        for d in DOMAINS}))
    return precision, recall


def test_bootstrap_champions_are_promoted_for_every_domain(champions):
    assert set(champions) == set(DOMAINS)


@pytest.mark.parametrize("domain", DOMAINS)
def test_normal_traffic_is_detected_precisely_with_model_incidents(run, domain):
    precision, recall = run
    report = {k: {d: q.as_dict() for d, q in v[domain].items()}
              for k, v in (("from_start", precision), ("after_warmup", recall))}
    overall, model = precision[domain]["all"], precision[domain].get("model")
    assert model is not None and model.incidents > 0, report
    assert overall.precision >= 0.90, report
    assert model.precision >= 0.80, report
    # IoT episodes are long (a stuck sensor repeats for many readings): fewer start per event.
    assert recall[domain]["all"].episodes >= 10, report
    assert recall[domain]["all"].recall >= 0.95, report
