"""The local scorer on tiny hand-written saved models (Spark's on-disk layout, no Spark)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models import local_scorer
from models.local_scorer import GBT, RF, UnsupportedModelError, compile_model

SPLIT = pa.struct([("featureIndex", pa.int32()),
                   ("leftCategoriesOrThreshold", pa.list_(pa.float64())),
                   ("numCategories", pa.int32())])
NODE = pa.struct([("id", pa.int32()), ("prediction", pa.float64()),
                  ("impurityStats", pa.list_(pa.float64())), ("leftChild", pa.int32()),
                  ("rightChild", pa.int32()), ("split", SPLIT)])
DATA = pa.schema([("treeID", pa.int32()), ("nodeData", NODE)])
TREES_META = pa.schema([("_1", pa.int32()), ("_2", pa.string()), ("_3", pa.float64())])


def leaf(node_id: int, prediction: float = 0.0, stats: tuple[float, ...] = (0.0, 0.0)) -> dict:
    return {"id": node_id, "prediction": prediction, "impurityStats": list(stats),
            "leftChild": -1, "rightChild": -1,
            "split": {"featureIndex": -1, "leftCategoriesOrThreshold": [], "numCategories": -1}}


def split(node_id: int, feature: int, left: int, right: int, *, threshold: float | None = None,
          left_categories: tuple[float, ...] = (), n_categories: int = -1) -> dict:
    values = [threshold] if threshold is not None else list(left_categories)
    return {"id": node_id, "prediction": 0.0, "impurityStats": [0.0, 0.0], "leftChild": left,
            "rightChild": right, "split": {"featureIndex": feature,
                                           "leftCategoriesOrThreshold": values,
                                           "numCategories": n_categories}}


def write_stage(stage_dir: Path, meta: dict) -> None:
    (stage_dir / "metadata").mkdir(parents=True)
    (stage_dir / "metadata" / "part-00000").write_text(json.dumps(meta) + "\n")


def save_model(path: Path, model_class: str, trees: list[list[dict]], weights: list[float], *,
               inputs: tuple[str, ...] = ("amount", "channel"), handle_invalid: str = "keep",
               params: dict | None = None, extra: dict | None = None) -> Path:
    """A PipelineModel directory laid out as Spark 4 saves VectorAssembler + tree ensemble."""
    uids = ["VectorAssembler_a", "Model_b"]
    write_stage(path, {"class": "org.apache.spark.ml.PipelineModel", "uid": "p",
                       "paramMap": {"stageUids": uids}, "defaultParamMap": {}})
    write_stage(path / "stages" / f"0_{uids[0]}", {
        "class": "org.apache.spark.ml.feature.VectorAssembler", "uid": uids[0],
        "paramMap": {"inputCols": list(inputs), "outputCol": "features",
                     "handleInvalid": handle_invalid},
        "defaultParamMap": {"handleInvalid": "error"}})
    stage = path / "stages" / f"1_{uids[1]}"
    write_stage(stage, {"class": model_class, "uid": uids[1], "paramMap": params or {},
                        "defaultParamMap": {"featuresCol": "features"},
                        "numFeatures": len(inputs), "numTrees": len(trees), "numClasses": 2,
                        **(extra or {})})
    rows = [{"treeID": t, "nodeData": node} for t, nodes in enumerate(trees) for node in nodes]
    for folder, table in (("data", pa.Table.from_pylist(rows, schema=DATA)),
                          ("treesMetadata", pa.Table.from_pylist(
                              [{"_1": t, "_2": "{}", "_3": w} for t, w in enumerate(weights)],
                              schema=TREES_META))):
        (stage / folder).mkdir()
        pq.write_table(table, stage / folder / "part-00000.parquet")
        (stage / folder / "_SUCCESS").touch()
    return path


# Tree 0: amount <= 10 -> -1.0; else channel in {1} (4 categories, left side stored) -> 2.0
# else 0.5. Tree 1: channel in {0, 1, 3} (Spark stores the smaller right side {2}) -> 1.0
# else -1.0.
GBT_TREES = [
    [split(0, 0, 1, 2, threshold=10.0), leaf(1, -1.0),
     split(2, 1, 3, 4, left_categories=(1.0,), n_categories=4), leaf(3, 2.0), leaf(4, 0.5)],
    [split(0, 1, 1, 2, left_categories=(0.0, 1.0, 3.0), n_categories=4), leaf(1, 1.0),
     leaf(2, -1.0)],
]
GBT_WEIGHTS = [1.0, 0.1]


def gbt_p1(margin: float) -> float:
    return 1.0 - 1.0 / (1.0 + math.exp(2.0 * margin))


@pytest.fixture
def gbt(tmp_path):
    return compile_model(save_model(tmp_path / "gbt", GBT, GBT_TREES, GBT_WEIGHTS))


@pytest.mark.parametrize(("amount", "channel", "margin"), [
    (10.0, 2.0, -1.0 - 0.1),  # exactly on the threshold goes left
    (np.nextafter(10.0, np.inf), 1.0, 2.0 + 0.1),
    (50.0, 2.0, 0.5 - 0.1),
    (np.nan, 1.0, 2.0 + 0.1),  # NaN <= t is false: right, as in the JVM
    (50.0, 7.0, 0.5 + 0.1),  # unseen category: not in a stored left set -> right;
    (50.0, 2.5, 0.5 + 0.1),  # not in a stored right set -> left
    (50.0, np.nan, 0.5 + 0.1),
])
def test_gbt_routes_rows_as_spark(gbt, amount, channel, margin):
    p1, label = gbt.score(np.array([[amount, channel]]))
    assert p1[0] == pytest.approx(gbt_p1(margin), abs=1e-15)
    assert bool(label[0]) is (margin > 0)


def test_columns_follow_the_assembler_not_the_frame(gbt):
    rows = pd.DataFrame({"noise": [1, 2], "channel": [1.0, 2.0], "amount": [50.0, 5.0]})
    expected = gbt.predict_proba(np.array([[50.0, 1.0], [5.0, 2.0]]))
    np.testing.assert_array_equal(gbt.predict_proba(rows), expected)
    np.testing.assert_array_equal(gbt.predict_proba({"amount": 5.0, "channel": 2.0}),
                                  expected[1:])


def test_bad_input_is_named(gbt):
    with pytest.raises(KeyError, match="channel"):
        gbt.predict_proba(pd.DataFrame({"amount": [1.0]}))
    with pytest.raises(TypeError, match="channel"):
        gbt.predict_proba(pd.DataFrame({"amount": [1.0], "channel": ["web"]}))
    with pytest.raises(ValueError, match="shape"):
        gbt.predict_proba(np.zeros((3, 5)))


def test_handle_invalid_error_and_skip(tmp_path):
    rows = np.array([[50.0, 1.0], [np.nan, 1.0]])
    strict = compile_model(save_model(tmp_path / "e", GBT, GBT_TREES, GBT_WEIGHTS,
                                      handle_invalid="error"))
    with pytest.raises(ValueError, match=r"\['amount'\].*1 row"):
        strict.score(rows)

    skipping = compile_model(save_model(tmp_path / "s", GBT, GBT_TREES, GBT_WEIGHTS,
                                        handle_invalid="skip"))
    p1, label = skipping.score(rows)
    assert p1[0] == pytest.approx(gbt_p1(2.1)) and label[0]
    assert np.isnan(p1[1]) and not label[1]


# RF: tree 0 splits amount at 10; tree 1 is one leaf. Leaves hold (weighted) class counts.
RF_TREES = [
    [split(0, 0, 1, 2, threshold=10.0), leaf(1, stats=(6.0, 2.0)), leaf(2, stats=(1.0, 3.0))],
    [leaf(0, stats=(3.0, 9.0))],
]


def test_rf_averages_per_tree_normalised_counts(tmp_path):
    scorer = compile_model(save_model(tmp_path / "rf", RF, RF_TREES, [1.0, 1.0]))
    p1, label = scorer.score(np.array([[5.0, 0.0], [20.0, 0.0]]))
    np.testing.assert_allclose(p1, [(2 / 8 + 9 / 12) / 2, (3 / 4 + 9 / 12) / 2], atol=1e-15)
    np.testing.assert_array_equal(label, [False, True])


def test_rf_tie_goes_to_class_zero(tmp_path):
    trees = [[leaf(0, stats=(3.0, 1.0))], [leaf(0, stats=(1.0, 3.0))]]
    scorer = compile_model(save_model(tmp_path / "rf", RF, trees, [1.0, 1.0]))
    p1, label = scorer.score(np.array([[1.0, 1.0]]))
    assert p1[0] == 0.5 and not label[0]


def test_thresholds_saved_with_the_model_decide_labels(tmp_path):
    # Margin 0.4 -> p1 ~ 0.69: positive at Spark's default, negative with thresholds
    # (0.2, 0.8) since 0.69 / 0.8 < 0.31 / 0.2.
    scorer = compile_model(save_model(tmp_path / "t", GBT, GBT_TREES, GBT_WEIGHTS,
                                      params={"thresholds": [0.2, 0.8]}))
    rows = np.array([[50.0, 2.0]])
    assert not scorer.predict(rows)[0]
    assert compile_model(tmp_path / "t", threshold_p1=0.6).predict(rows)[0]


def test_unsupported_models_are_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="GBTRegressionModel"):
        compile_model(save_model(tmp_path / "r", "org.apache.spark.ml.regression."
                                 "GBTRegressionModel", GBT_TREES, GBT_WEIGHTS))
    with pytest.raises(UnsupportedModelError, match="binary"):
        compile_model(save_model(tmp_path / "m", RF, RF_TREES, [1.0, 1.0],
                                 extra={"numClasses": 3}))
    with pytest.raises(UnsupportedModelError, match="vector-typed"):
        compile_model(save_model(tmp_path / "v", GBT, GBT_TREES, GBT_WEIGHTS,
                                 extra={"numFeatures": 7}))


def test_ensembles_too_deep_for_the_padded_layout_are_refused(tmp_path, monkeypatch):
    path = save_model(tmp_path / "deep", GBT, GBT_TREES, GBT_WEIGHTS)
    monkeypatch.setattr(local_scorer, "MAX_SLOTS", 13)  # 2 trees of depth 2 need 14 slots
    with pytest.raises(UnsupportedModelError, match="shallower"):
        compile_model(path)
