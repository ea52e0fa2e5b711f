"""Why a tree ensemble scored a row: per-feature contributions along each tree's path.

Saabas' attribution: a tree's output is the value at its root plus the change of value at
every split on the way down to the row's leaf, each change credited to the feature that split.
The compiled scorer keeps leaves only, so a node's value here is the plain average of the leaf
slots under it (the training counts that Spark weighs with are not kept). The decomposition is
still exact: the contributions plus a per-model bias add up to the score, in log-odds for GBT
(``2 * margin``, as ``p1 = 1 / (1 + exp(-2 margin))``) and in probability for random forests.
"""

from __future__ import annotations

import numpy as np

from models.local_scorer import LocalScorer


def _values_and_weights(scorer: LocalScorer) -> tuple[np.ndarray, np.ndarray]:
    """Leaf values [trees, 2^depth] of the score's class and each tree's weight in the score."""
    trees = len(scorer.tree_weights)
    if scorer.kind == "gbt":
        return scorer.leaf_value[0].reshape(trees, -1), 2.0 * scorer.tree_weights
    return scorer.leaf_value[1].reshape(trees, -1), np.full(trees, 1.0 / trees)


def bias(scorer: LocalScorer) -> float:
    """The score of a row that no split moves: what the contributions are relative to."""
    values, weights = _values_and_weights(scorer)
    return float(values.mean(axis=1) @ weights)


def contributions(scorer: LocalScorer, x: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """[n, features] contributions of rows `x` that reached leaf slots `leaves` [trees, n]."""
    n, width = x.shape
    depth = scorer.depth
    values, weights = _values_and_weights(scorer)
    trees = len(weights)
    tree_rows = np.arange(trees)[:, None]
    # Position of each row's leaf within its tree; its ancestor at level l is local >> (d - l).
    local = leaves - (tree_rows << depth)
    splits = (1 << depth) - 1
    total = np.zeros(n * width)
    above = values.mean(axis=1)[:, None]  # the root's value, per tree
    for level in range(depth):
        node = local >> (depth - level)  # position of the split within its level
        child = local >> (depth - level - 1)
        # Every node of the next level averages one contiguous block of leaf slots.
        below = values.reshape(trees, 1 << (level + 1), -1).mean(axis=2)[tree_rows, child]
        step = (below - above) * weights[:, None]
        slot = tree_rows * splits + (1 << level) - 1 + node
        feature = scorer.feature[slot]
        total += np.bincount((feature + np.arange(n) * width).ravel(), weights=step.ravel(),
                             minlength=n * width)
        above = below
    return total.reshape(n, width)
