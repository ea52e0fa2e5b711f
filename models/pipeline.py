"""The Spark MLlib pipeline of every PatternAlarm model: VectorAssembler + a tree ensemble.

Missing values: before the pipeline, null and NaN feature values are replaced by one stated
fill value (``fill_missing``, default 0.0); the number of affected rows and cells per column is
returned so the job logs it, and the value travels with the model (``scoring.json``) so a scorer
fills the same way. The assembler then runs with ``handleInvalid="error"``: a missing value
that slipped past the fill fails loudly instead of being dropped or scored as NaN. Rows are
never dropped. (The Great Expectations gate limits how many missing values are acceptable at
all.)

Class imbalance: each row gets a weight so that both classes carry the same total weight
(``balanced``), passed to the classifier as ``weightCol``; scores stay probabilities of the
weighted problem, and the decision threshold is chosen on the holdout afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, RandomForestClassifier
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

LABEL = "label"
WEIGHT = "weight"
FEATURES_VECTOR = "features"
DEFAULT_FILL_VALUE = 0.0

Algorithm = Literal["gbt", "rf"]


@dataclass(frozen=True)
class Hyperparameters:
    algorithm: Algorithm = "gbt"
    max_depth: int = 5
    max_bins: int = 32
    min_instances_per_node: int = 1
    subsampling_rate: float = 1.0
    seed: int = 42
    max_iter: int = 50         # gbt: boosting rounds
    step_size: float = 0.1     # gbt: learning rate
    num_trees: int = 100       # rf
    class_weight: Literal["balanced", "none"] = "balanced"

    def as_params(self) -> dict[str, object]:
        """The hyperparameters that apply to this algorithm, for logging."""
        unused = {"gbt": ("num_trees",), "rf": ("max_iter", "step_size")}[self.algorithm]
        return {k: v for k, v in self.__dict__.items() if k not in unused}


def build_pipeline(features: list[str], hp: Hyperparameters) -> Pipeline:
    assembler = VectorAssembler(inputCols=features, outputCol=FEATURES_VECTOR,
                                handleInvalid="error")
    common = dict(featuresCol=FEATURES_VECTOR, labelCol=LABEL, maxDepth=hp.max_depth,
                  maxBins=hp.max_bins, minInstancesPerNode=hp.min_instances_per_node,
                  subsamplingRate=hp.subsampling_rate, seed=hp.seed)
    if hp.class_weight == "balanced":
        common["weightCol"] = WEIGHT
    if hp.algorithm == "gbt":
        classifier = GBTClassifier(maxIter=hp.max_iter, stepSize=hp.step_size, **common)
    else:
        classifier = RandomForestClassifier(numTrees=hp.num_trees, **common)
    return Pipeline(stages=[assembler, classifier])


def fill_missing(df: DataFrame, features: list[str], value: float = DEFAULT_FILL_VALUE
                 ) -> tuple[DataFrame, int, dict[str, int]]:
    """Replace null/NaN feature values by ``value``.

    Returns the filled frame, the number of rows with at least one missing feature, and the
    count of missing cells per column (columns without any are left out).
    """
    def missing(name: str):
        return F.col(name).isNull() | F.isnan(F.col(name))

    any_missing = F.lit(False)
    for name in features:
        any_missing = any_missing | missing(name)
    counts = df.agg(
        F.sum(any_missing.cast("long")).alias("__rows"),
        *[F.sum(missing(name).cast("long")).alias(name) for name in features],
    ).first()
    per_column = {name: int(counts[name] or 0) for name in features if counts[name]}
    return df.fillna(value, subset=features), int(counts["__rows"] or 0), per_column


def add_class_weights(df: DataFrame) -> tuple[DataFrame, dict[int, float]]:
    """Add the ``weight`` column: n / (2 · n_class), so each class sums to n / 2."""
    counts = {int(row[LABEL]): row["count"] for row in df.groupBy(LABEL).count().collect()}
    total = sum(counts.values())
    weights = {label: total / (2.0 * n) for label, n in counts.items()}
    weight = F.when(F.col(LABEL) == 1, weights.get(1, 1.0)).otherwise(weights.get(0, 1.0))
    return df.withColumn(WEIGHT, weight), weights


def feature_importances(model: PipelineModel, features: list[str]) -> dict[str, float]:
    values = model.stages[-1].featureImportances.toArray()
    return {name: float(v) for name, v in zip(features, values, strict=True)}


def positive_probability(model: PipelineModel, df: DataFrame, column: str = "score"
                         ) -> DataFrame:
    """``df`` with the model's probability of class 1 as ``column``."""
    from pyspark.ml.functions import vector_to_array

    scored = model.transform(df)
    return scored.withColumn(column, vector_to_array(F.col("probability"))[1])
