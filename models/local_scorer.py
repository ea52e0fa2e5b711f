"""Score a saved Spark MLlib tree-ensemble pipeline with numpy, without Spark.

:func:`compile_model` reads a saved ``PipelineModel`` directory (``VectorAssembler`` followed by a
``GBTClassificationModel`` or ``RandomForestClassificationModel``) into arrays. Each tree is
padded to a complete binary tree of the ensemble's depth and stored heap-ordered (children of
slot h at 2h+1, 2h+2): a leaf above the last level becomes dummy splits whose descendants all
hold its value. Scoring then walks every tree for every row at once, one level per step, with
child positions computed rather than looked up, so a call costs a few dozen numpy operations
whatever the batch size. The price is memory exponential in depth: models needing more than
``MAX_SLOTS`` slots (trees x 2^(depth+1), e.g. 100 trees deeper than 14) are refused.

It reproduces Spark's arithmetic, not just its decisions:

- continuous split: ``x <= threshold`` goes left, so NaN goes right, as in the JVM;
- categorical split: Spark keeps the smaller side of the category set and tests membership in
  it, so a value in neither set (unseen or non-integer) goes to the side that was *not* stored;
- GBT: margin ``m = sum(weight_i * leaf_i)``, ``p1 = 1 - 1 / (1 + exp(2m))``, label ``m > 0``;
- RF: each tree's leaf class counts are normalised to sum 1, summed over trees in tree order,
  then divided by their sum; label by argmax, a tie going to class 0;
- a ``thresholds`` param saved with the classifier decides labels as Spark does (argmax of
  ``p_k / t_k``).

Missing values follow the assembler's ``handleInvalid``: ``error`` raises, ``keep`` lets NaN
through the trees, ``skip`` (Spark drops the row) gives p1 = NaN and label False for that row.
Not supported, with an error at compile time: other stages, vector-typed assembler inputs,
multiclass models, tree regressors, ensembles over ``MAX_SLOTS``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ASSEMBLER = "org.apache.spark.ml.feature.VectorAssembler"
GBT = "org.apache.spark.ml.classification.GBTClassificationModel"
RF = "org.apache.spark.ml.classification.RandomForestClassificationModel"

MAX_SLOTS = 1 << 22  # at most ~100 MB of arrays

Kind = Literal["gbt", "rf"]
Rows = pd.DataFrame | np.ndarray | Mapping[str, float]


class UnsupportedModelError(ValueError):
    """The saved model uses something this scorer does not reproduce exactly."""


@dataclass(frozen=True)
class LocalScorer:
    """Per tree, ``2^depth - 1`` split slots then ``2^depth`` leaf slots, trees one after
    another (tree t's split slot h is ``t * (2^depth - 1) + h``)."""

    kind: Kind
    features: tuple[str, ...]
    handle_invalid: str
    depth: int
    tree_weights: np.ndarray  # float64 [trees] (GBT)
    feature: np.ndarray  # int64 [trees * splits]
    threshold: np.ndarray  # float64 [trees * splits]
    # GBT: leaf prediction; RF: the leaf's class-0 and class-1 fractions of its counts.
    leaf_value: np.ndarray  # float64 [1 or 2, trees * leaves]
    # Categorical splits: row k of cat_left says, per category code, whether it goes left;
    # cat_other_left is where a value outside 0..numCategories-1 goes. -1: continuous slot.
    cat_slot: np.ndarray  # int64 [trees * splits]
    cat_left: np.ndarray  # bool [categorical splits, max categories]
    cat_other_left: np.ndarray  # bool [categorical splits]
    spark_thresholds: tuple[float, float] | None = None
    threshold_p1: float | None = None  # overrides spark_thresholds: label = p1 > threshold_p1
    # Derived in __post_init__: per-tree constants of the descent.
    _root: np.ndarray = field(init=False, repr=False)
    _shift: np.ndarray = field(init=False, repr=False)
    _to_leaf: np.ndarray = field(init=False, repr=False)

    # --- scoring ----------------------------------------------------------------------------

    def predict_proba(self, rows: Rows) -> np.ndarray:
        """P(class 1) per row, equal to Spark's ``probability[1]``."""
        return self.score(rows)[0]

    def predict(self, rows: Rows) -> np.ndarray:
        """Labels (bool) as Spark's ``prediction`` column, or ``p1 > threshold_p1`` if set."""
        return self.score(rows)[1]

    def score(self, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        """(p1, label) in one pass."""
        x = self.matrix(rows)
        skipped = self._check_invalid(x)
        leaves = self._leaves(x)
        if self.kind == "gbt":
            # Summed in tree order, not by BLAS (whose order depends on the batch shape): a
            # row scores the same alone or in any batch.
            weighted = self.leaf_value[0].take(leaves) * self.tree_weights[:, None]
            margin = np.cumsum(weighted, axis=0)[-1]
            p0 = 1.0 / (1.0 + np.exp(2.0 * margin))
            p1 = 1.0 - p0
            default_label = margin > 0.0
        else:
            # Trees added strictly in order, as Spark's loop does.
            votes0 = np.cumsum(self.leaf_value[0].take(leaves), axis=0)[-1]
            votes1 = np.cumsum(self.leaf_value[1].take(leaves), axis=0)[-1]
            total = votes0 + votes1
            safe = np.where(total == 0.0, 1.0, total)
            p0, p1 = votes0 / safe, votes1 / safe
            default_label = votes1 > votes0
        if self.threshold_p1 is not None:
            label = p1 > self.threshold_p1
        elif self.spark_thresholds is not None:
            label = _thresholds_pick_1(p0, p1, self.spark_thresholds)
        else:
            label = default_label
        if skipped is not None:
            p1 = np.where(skipped, np.nan, p1)
            label = label & ~skipped
        return p1, label

    def matrix(self, rows: Rows) -> np.ndarray:
        """Rows as a float64 [n, features] array in the assembler's column order."""
        if isinstance(rows, pd.DataFrame):
            if tuple(rows.columns) == self.features:
                # Fast path (~10 us): an all-numeric frame converts in one block.
                x = rows.to_numpy()
                if x.dtype.kind in "biuf":
                    return x.astype(np.float64, copy=False)
            missing = [c for c in self.features if c not in rows.columns]
            if missing:
                raise KeyError(f"missing feature columns: {missing}")
            frame = rows[list(self.features)]
            bad = [c for c, t in frame.dtypes.items()
                   if not (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t))]
            if bad:
                raise TypeError(f"non-numeric feature columns: {bad}")
            return frame.to_numpy(dtype=np.float64, na_value=np.nan)
        if isinstance(rows, Mapping):
            missing = [c for c in self.features if c not in rows]
            if missing:
                raise KeyError(f"missing features: {missing}")
            return np.array([[_float(rows[c]) for c in self.features]], dtype=np.float64)
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"expected a [n, {len(self.features)}] array with columns "
                             f"{list(self.features)}, got shape {x.shape}")
        return x

    def _check_invalid(self, x: np.ndarray) -> np.ndarray | None:
        """Rows Spark would skip (handleInvalid=skip), or raise as handleInvalid=error does."""
        if self.handle_invalid == "keep" or not np.isnan(x).any():
            return None
        invalid = np.isnan(x).any(axis=1)
        if self.handle_invalid == "skip":
            return invalid
        cols = [c for c, bad in zip(self.features, np.isnan(x).any(axis=0), strict=True) if bad]
        raise ValueError(f"NaN/null in features {cols} of {int(invalid.sum())} row(s) and "
                         "the model's assembler has handleInvalid='error'")

    def __post_init__(self) -> None:
        trees, splits = len(self.tree_weights), (1 << self.depth) - 1
        base = (np.arange(trees) * splits)[:, None]
        # Global slot g = base + h has its children at base + 2h + 1 + (go right), that is
        # 2g + (1 - base) + (go right): one constant per tree saves work on every level.
        object.__setattr__(self, "_root", base)
        object.__setattr__(self, "_shift", 2 - base)
        object.__setattr__(self, "_to_leaf", (np.arange(trees)[:, None] << self.depth)
                           - base - splits)

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        """Leaf slot per (tree, row): all rows descend all trees one level per step."""
        n = len(x)
        # Feature-major values: feature f of row r at f * n + r; a lone row (the API's case)
        # skips that arithmetic.
        columns = np.ascontiguousarray(x.T).ravel()
        rows = np.arange(n)
        slot = np.repeat(self._root, n, axis=1)
        for _ in range(self.depth):
            index = self.feature.take(slot)
            values = columns.take(index if n == 1 else index * n + rows)
            go_left = values <= self.threshold.take(slot)
            if len(self.cat_left):
                cat = self.cat_slot.take(slot)
                is_cat = cat >= 0
                if is_cat.any():
                    go_left[is_cat] = self._categorical_left(cat[is_cat], values[is_cat])
            slot = 2 * slot + self._shift - go_left
        return slot + self._to_leaf

    def _categorical_left(self, slot: np.ndarray, values: np.ndarray) -> np.ndarray:
        width = self.cat_left.shape[1]
        # NaN compares False everywhere, so it lands in "other" like any unknown value.
        known = (values >= 0) & (values < width) & (np.floor(values) == values)
        code = np.where(known, values, 0).astype(np.int64)
        return np.where(known, self.cat_left[slot, code], self.cat_other_left[slot])


def _thresholds_pick_1(p0: np.ndarray, p1: np.ndarray, t: tuple[float, float]) -> np.ndarray:
    """Spark's probability2prediction: the first class with the largest p_k / t_k wins.

    Java division gives +inf for p / 0 and NaN for 0 / 0; a NaN never wins a comparison, which
    leaves Spark's running maximum at -inf.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        s0, s1 = p0 / t[0], p1 / t[1]
    best0 = np.where(s0 > -np.inf, s0, -np.inf)
    return s1 > best0


def _float(value: object) -> float:
    return np.nan if value is None else float(value)


# --- compiling a saved model ------------------------------------------------------------------

def _metadata(stage_dir: Path) -> dict:
    parts = sorted((stage_dir / "metadata").glob("part-*"))
    if not parts:
        raise FileNotFoundError(f"no Spark metadata under {stage_dir}")
    return json.loads(parts[0].read_text().splitlines()[0])


def _param(meta: dict, name: str, default: object = None) -> object:
    return meta["paramMap"].get(name, meta.get("defaultParamMap", {}).get(name, default))


def compile_model(path: str | Path, threshold_p1: float | None = None) -> LocalScorer:
    """Compile a saved PipelineModel directory (as ``model.write().save(path)`` writes it)."""
    root = Path(path)
    pipeline = _metadata(root)
    uids = pipeline["paramMap"]["stageUids"]
    stage_dirs = [root / "stages" / f"{i}_{uid}" for i, uid in enumerate(uids)]
    stages = [_metadata(d) for d in stage_dirs]
    classes = [s["class"] for s in stages]
    if len(stages) != 2 or classes[0] != ASSEMBLER or classes[1] not in (GBT, RF):
        raise UnsupportedModelError(
            f"expected VectorAssembler + GBT/RF classification model, got stages {classes}")
    assembler, model = stages
    features = tuple(_param(assembler, "inputCols"))
    if _param(model, "featuresCol") != _param(assembler, "outputCol"):
        raise UnsupportedModelError("the classifier does not read the assembler's output column")
    if model["numFeatures"] != len(features):
        raise UnsupportedModelError(
            f"{len(features)} assembler inputs but {model['numFeatures']} features: vector-typed "
            "inputs are not supported")
    kind: Kind = "gbt" if model["class"] == GBT else "rf"
    if kind == "rf" and model["numClasses"] != 2:
        raise UnsupportedModelError(f"only binary models, this one has {model['numClasses']}")
    thresholds = _param(model, "thresholds")
    return _build(
        kind, features, str(_param(assembler, "handleInvalid", "error")), stage_dirs[1],
        tuple(thresholds) if thresholds else None, threshold_p1)


def _build(kind: Kind, features: tuple[str, ...], handle_invalid: str, stage_dir: Path,
           spark_thresholds: tuple[float, float] | None,
           threshold_p1: float | None) -> LocalScorer:
    nodes = pq.read_table(stage_dir / "data").flatten().flatten().to_pandas()
    nodes = nodes.sort_values(["treeID", "nodeData.id"], kind="stable").reset_index(drop=True)
    weights = pq.read_table(stage_dir / "treesMetadata").to_pandas().sort_values("_1")
    tree_ids = weights["_1"].to_numpy()
    if not np.array_equal(np.unique(nodes["treeID"]), tree_ids):
        raise UnsupportedModelError("trees in data/ and treesMetadata/ do not match")
    sizes = nodes.groupby("treeID", sort=True).size().to_numpy()
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tree_index = np.searchsorted(tree_ids, nodes["treeID"].to_numpy())
    local_id = nodes["nodeData.id"].to_numpy()
    if not np.array_equal(local_id, np.arange(len(nodes)) - offsets[tree_index]):
        raise UnsupportedModelError("node ids are not 0..n-1 within each tree")
    offset = offsets[tree_index]

    is_leaf = nodes["nodeData.leftChild"].to_numpy() < 0
    left = nodes["nodeData.leftChild"].to_numpy() + offset  # meaningless at leaves
    right = nodes["nodeData.rightChild"].to_numpy() + offset
    feature = np.where(is_leaf, 0, nodes["nodeData.split.featureIndex"].to_numpy())
    num_cats = nodes["nodeData.split.numCategories"].to_numpy()
    split_values = nodes["nodeData.split.leftCategoriesOrThreshold"].to_numpy()
    threshold = np.array([v[0] if (not leaf and n < 0) else np.inf
                          for v, leaf, n in zip(split_values, is_leaf, num_cats, strict=True)],
                         dtype=np.float64)

    categorical = np.flatnonzero(~is_leaf & (num_cats >= 0))
    cat_slot = np.full(len(nodes), -1, dtype=np.int64)
    cat_slot[categorical] = np.arange(len(categorical))
    width = int(num_cats[categorical].max()) if len(categorical) else 0
    cat_left = np.zeros((len(categorical), width), dtype=bool)
    cat_other_left = np.zeros(len(categorical), dtype=bool)
    for slot, node in enumerate(categorical):
        n_cat = int(num_cats[node])
        left_cats = np.asarray(split_values[node], dtype=np.int64)
        cat_left[slot, left_cats] = True
        # Spark stores the smaller side; membership of an unknown value is false there.
        cat_other_left[slot] = not (len(left_cats) <= n_cat // 2)

    if kind == "gbt":
        value = nodes["nodeData.prediction"].to_numpy(dtype=np.float64)[:, None]
    else:
        stats = np.stack(nodes["nodeData.impurityStats"].to_numpy()).astype(np.float64)
        total = stats[:, 0] + stats[:, 1]
        # A leaf with no weight adds nothing to the votes, as in Spark.
        value = np.where(total[:, None] == 0.0, 0.0,
                         stats / np.where(total == 0.0, 1.0, total)[:, None])

    depth = _max_depth(left, right, offsets, is_leaf)
    split_node, leaf_node = _heap_order(left, right, offsets, is_leaf, depth)
    real = split_node >= 0
    return LocalScorer(
        kind=kind, features=features, handle_invalid=handle_invalid, depth=depth,
        tree_weights=weights["_3"].to_numpy(dtype=np.float64),
        feature=np.where(real, feature[split_node], 0).astype(np.int64),
        # Padding slots: NaN compares false, so rows go right, to copies of the same leaf.
        threshold=np.where(real, threshold[split_node], np.nan),
        leaf_value=np.ascontiguousarray(value[leaf_node].T),
        cat_slot=np.where(real, cat_slot[split_node], -1),
        cat_left=cat_left, cat_other_left=cat_other_left,
        spark_thresholds=spark_thresholds, threshold_p1=threshold_p1)


def _max_depth(left: np.ndarray, right: np.ndarray, roots: np.ndarray,
               is_leaf: np.ndarray) -> int:
    depth, frontier = 0, roots
    while not is_leaf[frontier].all():
        inner = frontier[~is_leaf[frontier]]
        frontier = np.concatenate([left[inner], right[inner]])
        depth += 1
    return depth


def _heap_order(left: np.ndarray, right: np.ndarray, roots: np.ndarray, is_leaf: np.ndarray,
                depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Node id at each split slot (-1: padding) and at each leaf slot, trees concatenated."""
    splits, leaves = (1 << depth) - 1, 1 << depth
    if len(roots) * (splits + leaves) > MAX_SLOTS:
        raise UnsupportedModelError(
            f"{len(roots)} trees of depth {depth} need {len(roots) * (splits + leaves):,} "
            f"slots, more than {MAX_SLOTS:,}: train shallower trees")
    split_node = np.full(len(roots) * splits, -1, dtype=np.int64)
    leaf_node = np.empty(len(roots) * leaves, dtype=np.int64)
    for tree, root in enumerate(roots):
        stack = [(int(root), 0, 0)]
        while stack:
            node, slot, level = stack.pop()
            if is_leaf[node]:
                # Its descendants on the last level are one contiguous run of slots.
                first = last = slot
                for _ in range(depth - level):
                    first, last = 2 * first + 1, 2 * last + 2
                base = tree * leaves - splits
                leaf_node[base + first:base + last + 1] = node
            else:
                split_node[tree * splits + slot] = node
                stack += [(int(left[node]), 2 * slot + 1, level + 1),
                          (int(right[node]), 2 * slot + 2, level + 1)]
    return split_node, leaf_node
