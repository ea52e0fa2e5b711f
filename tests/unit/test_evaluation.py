"""Holdout metrics, threshold choice and the time split, on hand-made data with known answers."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from pyspark.sql import SparkSession

from models import evaluation as ev

# Ranked: 0.9 (+), 0.8 (-), 0.7 (+), 0.6 (-).
SCORES = np.array([0.7, 0.9, 0.6, 0.8])
LABELS = np.array([1, 1, 0, 0])


def test_pr_auc_is_average_precision():
    # Recall steps of 1/2 at precisions 1 and 2/3.
    assert ev.pr_auc(SCORES, LABELS) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_roc_auc_counts_ordered_pairs():
    # Of the 4 (positive, negative) pairs, 3 rank the positive higher.
    assert ev.roc_auc(SCORES, LABELS) == pytest.approx(0.75)


def test_ties_are_one_operating_point():
    scores, labels = np.array([0.5, 0.5]), np.array([1, 0])
    assert ev.roc_auc(scores, labels) == pytest.approx(0.5)
    assert ev.pr_auc(scores, labels) == pytest.approx(0.5)
    precision, recall, thresholds = ev.pr_curve(scores, labels)
    assert thresholds.tolist() == [0.5] and precision.tolist() == [0.5]


def test_perfect_ranking():
    scores, labels = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])
    assert ev.pr_auc(scores, labels) == 1.0
    assert ev.roc_auc(scores, labels) == 1.0


def test_metrics_need_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        ev.pr_auc(np.array([0.1, 0.2]), np.array([1, 1]))


# Ranked: + + - + + - - -; precision after each: 1, 1, 2/3, 3/4, 4/5, 4/6, 4/7, 4/8.
RANKED = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
RANKED_LABELS = np.array([1, 1, 0, 1, 1, 0, 0, 0])


@pytest.mark.parametrize(("target", "threshold", "recall"), [
    (0.8, 0.55, 1.0),    # 4/5 reaches 0.8 with every positive: cut between 0.6 and 0.5
    (0.9, 0.85, 0.5),    # only the top two reach 0.9: cut between 0.9 and 0.8
    (1.0, 0.85, 0.5),
    (0.75, 0.55, 1.0),   # 3/4 and 4/5 both qualify: the higher recall wins
])
def test_threshold_for_target_precision(target, threshold, recall):
    choice = ev.choose_threshold(RANKED, RANKED_LABELS, target)
    assert choice.target_met
    assert choice.threshold == pytest.approx(threshold)
    at = ev.confusion_at(RANKED, RANKED_LABELS, choice.threshold)
    assert at["precision"] >= target
    assert at["recall"] == recall


def test_equal_recall_takes_the_highest_threshold():
    # Every cut has recall 1 and precision >= 1/3: the top one has no false positives.
    choice = ev.choose_threshold(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 0]), 0.3)
    assert choice.threshold == pytest.approx(0.85)
    assert ev.confusion_at(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 0]),
                           choice.threshold)["fp"] == 0


def test_unreachable_target_falls_back_to_best_f1():
    scores, labels = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 0, 1])
    choice = ev.choose_threshold(scores, labels, 0.9)
    assert not choice.target_met
    # Best F1 is 2/3, taking everything: the threshold sits just below the lowest score.
    assert choice.threshold < 0.6
    assert ev.confusion_at(scores, labels, choice.threshold)["f1"] == pytest.approx(2 / 3)


def test_holdout_metrics_and_scoring_config():
    choice = ev.choose_threshold(RANKED, RANKED_LABELS, 0.9)
    metrics = ev.holdout_metrics(RANKED, RANKED_LABELS, choice)
    assert metrics["precision_at_threshold"] == 1.0
    assert metrics["recall_at_threshold"] == 0.5
    assert metrics["f1_at_threshold"] == pytest.approx(2 / 3)
    assert metrics["holdout_rows"] == 8 and metrics["holdout_positives"] == 4
    config = ev.scoring_config(choice, ["a", "b"], 0.0)
    assert config["threshold"] == choice.threshold and config["features"] == ["a", "b"]


def test_plots_are_png_files(tmp_path):
    paths = ev.write_plots(RANKED, RANKED_LABELS, 0.55, {"a": 0.7, "b": 0.3}, tmp_path)
    assert sorted(p.name for p in paths) == ["feature_importance.png", "pr_curve.png",
                                             "roc_curve.png", "score_histogram.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    from models.spark import get_spark

    existing = SparkSession.getActiveSession()
    session = get_spark("unit-time-split", "local[1]")
    yield session
    if existing is None:
        session.stop()


def test_time_split_has_no_leakage(spark):
    rng = np.random.default_rng(0)
    # 100 timestamps, 3 rows each: ties at the cutoff must not straddle the split.
    rows = [(int(t) * 1000, float(rng.integers(0, 2))) for t in np.repeat(np.arange(100), 3)]
    df = spark.createDataFrame(rows, "event_time long, label double")
    train, holdout, cutoff = ev.time_split(df, "event_time", 0.2)
    train_times = [r[0] for r in train.select("event_time").collect()]
    holdout_times = [r[0] for r in holdout.select("event_time").collect()]
    assert max(train_times) < cutoff <= min(holdout_times)
    assert len(train_times) + len(holdout_times) == 300
    assert len(holdout_times) == pytest.approx(60, abs=3)
    assert len(holdout_times) % 3 == 0  # whole timestamps only


def test_time_split_rejects_bad_fraction(spark):
    df = spark.createDataFrame([(1, 0.0)], "event_time long, label double")
    with pytest.raises(ev.SplitError):
        ev.time_split(df, "event_time", 1.0)
