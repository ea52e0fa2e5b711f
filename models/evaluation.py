"""Holdout evaluation: time-ordered split, ranking metrics, a threshold for a target precision,
and the plots logged with every model.

The metric functions are plain numpy over (scores, labels) so they are exact, testable by hand
and independent of Spark's binned evaluators. A score ``s`` predicts positive when
``s > threshold``, the rule of the local scorer (``models.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


class SplitError(ValueError):
    """The data cannot be split in time into a usable train set and holdout."""


# --- time split --------------------------------------------------------------------------------

def time_split(df: DataFrame, time_col: str, holdout_fraction: float
               ) -> tuple[DataFrame, DataFrame, int]:
    """Split at a time cutoff: train = rows strictly before it, holdout = rows at or after it.

    Every training row is older than every holdout row, so nothing from the holdout's period
    (features of later events, labels that arrived later) can leak into training. Rows sharing
    the cutoff timestamp all go to the holdout, never split across both sides. The cutoff is the
    (1 - holdout_fraction) quantile of the time column, computed by Spark without collecting.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise SplitError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
    (cutoff,) = df.approxQuantile(time_col, [1.0 - holdout_fraction], 0.001)
    cutoff = int(cutoff)
    train = df.filter(F.col(time_col) < cutoff)
    holdout = df.filter(F.col(time_col) >= cutoff)
    return train, holdout, cutoff


# --- metrics -----------------------------------------------------------------------------------

def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=float)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError("scores and labels must be 1-d arrays of the same length")
    positives = labels.sum()
    if positives == 0 or positives == len(labels):
        raise ValueError("metrics need both classes among the labels")
    return scores, labels


def _operating_points(scores: np.ndarray, labels: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with true and false positive counts at each."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    # The last index of each run of equal scores: tied scores are one operating point.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return s[last], tp, fp


def pr_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), thresholds descending."""
    scores, labels = _check(scores, labels)
    thresholds, tp, fp = _operating_points(scores, labels)
    return tp / (tp + fp), tp / labels.sum(), thresholds


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), starting at (0, 0)."""
    scores, labels = _check(scores, labels)
    thresholds, tp, fp = _operating_points(scores, labels)
    pos = labels.sum()
    neg = len(labels) - pos
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos], np.r_[np.inf, thresholds]


def pr_auc(scores, labels) -> float:
    """Area under the PR curve as average precision: sum of precision × recall increments.

    The step form, not the trapezoid: linear interpolation between PR points overstates the
    area (precision is not linear in recall).
    """
    precision, recall, _ = pr_curve(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores, labels) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def confusion_at(scores, labels, threshold: float) -> dict[str, float]:
    scores, labels = _check(scores, labels)
    predicted = scores > threshold
    tp = float(np.sum(predicted & (labels == 1)))
    fp = float(np.sum(predicted & (labels == 0)))
    fn = float(np.sum(~predicted & (labels == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    target_precision: float
    target_met: bool  # False: no threshold reached the target; the best-F1 one was taken


def choose_threshold(scores, labels, target_precision: float) -> ThresholdChoice:
    """The threshold with the highest recall whose precision reaches the target.

    Among operating points with equal recall the highest is taken (same true positives, fewer
    false ones). If none reaches the target, the point with the best F1 is taken and
    ``target_met`` is False so the caller can log that the target was out of reach. The
    threshold returned lies halfway between the lowest score the point includes and the next
    lower score, so ``score > threshold`` reproduces the point exactly on this data and leaves a
    margin on both sides for new scores.
    """
    precision, recall, thresholds = pr_curve(scores, labels)
    eligible = np.flatnonzero(precision >= target_precision)
    if eligible.size:
        # Thresholds descend and recall rises with the index: the first index holding the
        # largest eligible recall is the highest threshold with that recall.
        best_recall = recall[eligible].max()
        index = int(eligible[np.argmax(recall[eligible] == best_recall)])
    else:
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
        index = int(np.argmax(f1))
    lowest = thresholds[index]
    threshold = ((lowest + thresholds[index + 1]) / 2 if index + 1 < len(thresholds)
                 else np.nextafter(lowest, -np.inf))  # every score is included
    return ThresholdChoice(float(threshold), target_precision, bool(eligible.size))


def holdout_metrics(scores, labels, choice: ThresholdChoice) -> dict[str, float]:
    """The metrics logged for a model (and printed by ``--json``)."""
    at = confusion_at(scores, labels, choice.threshold)
    return {
        "pr_auc": pr_auc(scores, labels),
        "roc_auc": roc_auc(scores, labels),
        "threshold": choice.threshold,
        "target_precision": choice.target_precision,
        "target_precision_met": float(choice.target_met),
        "precision_at_threshold": at["precision"],
        "recall_at_threshold": at["recall"],
        "f1_at_threshold": at["f1"],
        "holdout_rows": float(len(np.asarray(scores))),
        "holdout_positives": float(np.sum(labels)),
    }


def scoring_config(choice: ThresholdChoice, features: list[str], fill_value: float) -> dict:
    """What a scorer needs besides the trees: the contents of ``scoring.json``."""
    return {"threshold": choice.threshold, "target_precision": choice.target_precision,
            "target_precision_met": choice.target_met, "features": features,
            "missing_fill_value": fill_value}


# --- plots -------------------------------------------------------------------------------------

def write_plots(scores, labels, threshold: float, importances: dict[str, float],
                out_dir: Path) -> list[Path]:
    """PR curve, ROC curve, score histogram by class and feature importance as PNG files."""
    import matplotlib

    matplotlib.use("Agg")  # no display in jobs and CI
    import matplotlib.pyplot as plt

    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=float)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    precision, recall, _ = pr_curve(scores, labels)
    at = confusion_at(scores, labels, threshold)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(recall, precision, where="post")
    ax.plot([at["recall"]], [at["precision"]], "o", label=f"threshold {threshold:.3f}")
    ax.axhline(labels.mean(), linestyle=":", color="grey", label="base rate")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"PR curve (AP {pr_auc(scores, labels):.3f})")
    ax.legend(loc="lower left")
    save(fig, "pr_curve.png")

    fpr, tpr, _ = roc_curve(scores, labels)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=f"ROC (AUC {roc_auc(scores, labels):.3f})")
    save(fig, "roc_curve.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, density=True, label="negative")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, density=True, label="positive")
    ax.axvline(threshold, color="black", linestyle="--", label="threshold")
    ax.set(xlabel="score", ylabel="density", title="Holdout scores by class")
    ax.legend()
    save(fig, "score_histogram.png")

    ranked = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5, max(2.5, 0.3 * len(ranked) + 1)))
    ax.barh([name for name, _ in ranked], [value for _, value in ranked])
    ax.set(xlabel="importance", title="Feature importance")
    save(fig, "feature_importance.png")
    return paths

