"""Champion models as the API uses them: loaded per domain from the MLflow registry, scored
with the local (numpy) scorer compiled from the Spark model, so answers equal Spark's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from fastapi.exceptions import RequestValidationError

from api.schemas import PredictRequest
from models import explain
from models import features as feature_engines
from models.local_scorer import LocalScorer
from patternalarm.settings import DOMAINS, Settings, model_name

if TYPE_CHECKING:
    from models.registry import ChampionScorer

TOP_FEATURES = 3


class NoChampion(LookupError):
    """A domain has no model with the `champion` alias yet; answered with 503."""

    def __init__(self, domain: str, reason: str = ""):
        name = model_name(domain)
        super().__init__(
            f"no champion model for {domain!r} yet ({name} has no `champion` alias"
            f"{': ' + reason if reason else ''}). Train and promote one: "
            f"`patternalarm train --domain {domain} --promote` "
            f"(or trigger the retrain DAG in Airflow).")


def _invalid(loc: tuple, msg: str) -> RequestValidationError:
    # The same shape as FastAPI's own 422s, so clients parse one format of field errors.
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg}])


def _event_features(item: PredictRequest, names: Sequence[str], loc: tuple) -> list[float]:
    """The last event's features, from the entity's history by the stream's own engine."""
    engine = feature_engines.ENGINES[item.domain]
    events = sorted(item.events, key=lambda e: e["event_time"])
    columns = [[e["payload"].get(field) for e in events] for field in engine.inputs]
    vectors = feature_engines.fold(item.domain, feature_engines.new_state(item.domain),
                                   [e["entity_id"] for e in events],
                                   [e["event_time"] for e in events], columns)
    computed = dict(zip(engine.names, vectors[-1].tolist(), strict=True))
    missing = [n for n in names if n not in computed]
    if missing:
        raise _invalid((*loc, "events"), f"the model uses features that events do not give "
                                         f"({', '.join(missing)}); send `features` instead")
    return [computed[n] for n in names]


def feature_matrix(names: Sequence[str], model: str, items: Sequence[PredictRequest],
                   loc: tuple, positions: Sequence[int] | None = None) -> np.ndarray:
    """Rows in the model's feature order; `positions` locate items of a batch in errors."""
    matrix = np.empty((len(items), len(names)), dtype=np.float64)
    for row, item in enumerate(items):
        where = loc if positions is None else (*loc, positions[row])
        if item.events is not None:
            matrix[row] = _event_features(item, names, where)
            continue
        given = item.features
        try:
            matrix[row] = [given[n] for n in names]
        except KeyError:
            missing = [n for n in names if n not in given]
            raise _invalid((*where, "features"),
                           f"missing features of {model}: "
                           f"{', '.join(missing)}") from None
        if len(given) != len(names):
            unknown = sorted(set(given) - set(names))
            raise _invalid((*where, "features"), f"unknown features: {', '.join(unknown)}")
    return matrix


def _snapshot(champion: ChampionScorer) -> tuple[str, LocalScorer]:
    """A (version, scorer) pair that belong together, even if the alias moves meanwhile."""
    while True:
        version, scorer = champion.version, champion.scorer
        if champion.version == version:
            # str: a SQL-backed registry hands out int versions, the REST one strings.
            return str(version), scorer


def predict_many(champion: ChampionScorer, items: Sequence[PredictRequest], loc: tuple,
                 positions: Sequence[int] | None = None) -> list[dict]:
    """Score items of one domain in one call: the same answers as scoring them one by one.

    Answers are plain dicts in the shape of :class:`~api.schemas.Prediction`: building tens
    of thousands of validated models would cost more than the scoring itself.
    """
    version, scorer = _snapshot(champion)
    names = scorer.features
    matrix = feature_matrix(names, f"{champion.name} v{version}", items, loc, positions)
    probabilities, labels = scorer.score(matrix)
    # The scorer has no public accessor for the leaves its walk reached; the explanation
    # needs them (see models/explain.py).
    why = explain.contributions(scorer, matrix, scorer._leaves(matrix))
    top = np.argsort(-np.abs(why), axis=1, kind="stable")[:, :TOP_FEATURES]
    top_values = np.take_along_axis(matrix, top, axis=1).tolist()
    top_why = np.take_along_axis(why, top, axis=1).tolist()
    domain = items[0].domain
    model = {"threshold": scorer.threshold_p1, "model_name": champion.name,
             "model_version": version}
    return [{"domain": domain, "probability": probability, "anomaly": label, **model,
             "top_features": [{"feature": names[j], "value": v, "contribution": c}
                              for j, v, c in zip(columns, values, contributions, strict=True)]}
            for probability, label, columns, values, contributions in zip(
                probabilities.tolist(), labels.tolist(), top.tolist(), top_values, top_why,
                strict=True)]


class ModelProvider:
    """Each domain's champion, loaded from the registry on first use.

    The loaded scorer follows the alias in its own thread, so a request never waits on MLflow
    once its domain is loaded. A domain found without a champion is asked again only after
    RETRY_S, so clients retrying a 503 do not hammer the registry.
    """

    RETRY_S = 5.0
    REFRESH_S = 5.0

    def __init__(self, settings: Settings):
        self._tracking_uri = settings.tracking_uri
        self._champions: dict[str, ChampionScorer] = {}
        self._missing: dict[str, tuple[float, NoChampion]] = {}
        self._lock = threading.Lock()

    def champion(self, domain: str) -> ChampionScorer:
        champion = self._champions.get(domain)
        if champion is None:
            with self._lock:  # concurrent first requests load the model once
                champion = self._champions.get(domain) or self._load(domain)
                self._champions[domain] = champion
        return champion

    def _load(self, domain: str) -> ChampionScorer:
        missing = self._missing.get(domain)
        if missing and time.monotonic() - missing[0] < self.RETRY_S:
            raise missing[1]
        # mlflow is heavy to import: only when scoring starts, never for incidents or health.
        import mlflow
        from mlflow.exceptions import MlflowException

        from models.registry import ChampionScorer, client_for

        # Downloading `models:/` URIs resolves them in the process-wide registry, whatever
        # client asked: without this it would look in a local ./mlflow.db.
        mlflow.set_tracking_uri(self._tracking_uri)
        try:
            champion = ChampionScorer(model_name(domain),
                                      refresh_interval_s=self.REFRESH_S,
                                      client=client_for(self._tracking_uri))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            error = NoChampion(domain, str(exc))
            self._missing[domain] = (time.monotonic(), error)
            raise error from None
        self._missing.pop(domain, None)
        champion.start()
        return champion

    def versions(self) -> dict[str, str | None]:
        return {d: (str(c.version) if (c := self._champions.get(d)) else None)
                for d in DOMAINS}

    def loaded(self) -> dict[str, tuple[str, str]]:
        return {d: (c.name, str(c.version)) for d, c in self._champions.items()}

    def close(self) -> None:
        for champion in self._champions.values():
            champion.stop()
        self._champions.clear()
