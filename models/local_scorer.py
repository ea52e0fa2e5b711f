"""Score a saved Spark MLlib tree-ensemble pipeline with numpy, without Spark.

:func:`compile_model` reads a saved ``PipelineModel`` directory (``VectorAssembler`` followed by a
``GBTClassificationModel`` or ``RandomForestClassificationModel``) into flat node arrays. Scoring
walks every tree for every row at once, one tree level per step, so a call costs a few dozen
numpy operations whatever the batch size.

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
multiclass models, tree regressors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ASSEMBLER = "org.apache.spark.ml.feature.VectorAssembler"
GBT = "org.apache.spark.ml.classification.GBTClassificationModel"
RF = "org.apache.spark.ml.classification.RandomForestClassificationModel"

Kind = Literal["gbt", "rf"]
Rows = pd.DataFrame | np.ndarray | Mapping[str, float]


class UnsupportedModelError(ValueError):
    """The saved model uses something this scorer does not reproduce exactly."""


@dataclass(frozen=True)
class LocalScorer:
    """Flat arrays of all trees' nodes; node ids are global (tree offsets added)."""

    kind: Kind
    features: tuple[str, ...]
    handle_invalid: str
    roots: np.ndarray  # int64 [trees]
    tree_weights: np.ndarray  # float64 [trees] (GBT)
    feature: np.ndarray  # int64 [nodes], 0 at leaves (unused there)
    threshold: np.ndarray  # float64 [nodes]
    left: np.ndarray  # int64 [nodes]; a leaf points to itself so extra steps are no-ops
    right: np.ndarray  # int64 [nodes]
    value: np.ndarray  # float64 [nodes, 1] GBT leaf prediction | [nodes, 2] RF class fractions
    depth: int
    # Categorical splits: row k of cat_left says, per category code, whether it goes left;
    # cat_other_left is where a value outside 0..numCategories-1 goes. -1: continuous node.
    cat_slot: np.ndarray  # int64 [nodes]
    cat_left: np.ndarray  # bool [categorical nodes, max categories]
    cat_other_left: np.ndarray  # bool [categorical nodes]
    spark_thresholds: tuple[float, float] | None = None
    threshold_p1: float | None = None  # overrides spark_thresholds: label = p1 > threshold_p1

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
            margin = self.value[leaves, 0] @ self.tree_weights
            p0 = 1.0 / (1.0 + np.exp(2.0 * margin))
            p1 = 1.0 - p0
            default_label = margin > 0.0
        else:
            # cumsum adds trees strictly left to right, as Spark's loop does.
            votes = np.cumsum(self.value[leaves], axis=1)[:, -1, :]
            total = votes[:, 0] + votes[:, 1]
            safe = np.where(total == 0.0, 1.0, total)
            p0, p1 = votes[:, 0] / safe, votes[:, 1] / safe
            default_label = votes[:, 1] > votes[:, 0]
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
        if self.handle_invalid == "keep":
            return None
        invalid = np.isnan(x).any(axis=1)
        if self.handle_invalid == "skip":
            return invalid
        if invalid.any():
            cols = [c for c, bad in zip(self.features, np.isnan(x).any(axis=0), strict=True)
                    if bad]
            raise ValueError(f"NaN/null in features {cols} of {int(invalid.sum())} row(s) and "
                             "the model's assembler has handleInvalid='error'")
        return None

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        """Leaf node id per (row, tree): all rows descend all trees one level per step."""
        n, width = x.shape
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        row_base = (np.arange(n) * width)[:, None]
        flat = x.ravel()
        for _ in range(self.depth):
            values = flat[row_base + self.feature[node]]
            go_left = values <= self.threshold[node]
            if len(self.cat_left):
                slot = self.cat_slot[node]
                is_cat = slot >= 0
                if is_cat.any():
                    go_left[is_cat] = self._categorical_left(slot[is_cat], values[is_cat])
            node = np.where(go_left, self.left[node], self.right[node])
        return node

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

    own = np.arange(len(nodes))
    is_leaf = nodes["nodeData.leftChild"].to_numpy() < 0
    left = np.where(is_leaf, own, nodes["nodeData.leftChild"].to_numpy() + offset)
    right = np.where(is_leaf, own, nodes["nodeData.rightChild"].to_numpy() + offset)
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

    return LocalScorer(
        kind=kind, features=features, handle_invalid=handle_invalid,
        roots=offsets.astype(np.int64), tree_weights=weights["_3"].to_numpy(dtype=np.float64),
        feature=feature.astype(np.int64), threshold=threshold,
        left=left.astype(np.int64), right=right.astype(np.int64), value=value,
        depth=_max_depth(left, right, offsets, is_leaf),
        cat_slot=cat_slot, cat_left=cat_left, cat_other_left=cat_other_left,
        spark_thresholds=spark_thresholds, threshold_p1=threshold_p1)


def _max_depth(left: np.ndarray, right: np.ndarray, roots: np.ndarray,
               is_leaf: np.ndarray) -> int:
    depth, frontier = 0, roots
    while not is_leaf[frontier].all():
        inner = frontier[~is_leaf[frontier]]
        frontier = np.concatenate([left[inner], right[inner]])
        depth += 1
    return depth
