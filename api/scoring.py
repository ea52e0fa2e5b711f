"""Champion models as the API uses them: loaded per domain from the MLflow registry, scored
with the local (numpy) scorer compiled from the Spark model, so answers equal Spark's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from fastapi.exceptions import RequestValidationError

from api.schemas import Contribution, Prediction, PredictRequest
from models import features as feature_engines
from patternalarm.settings import DOMAINS, Settings

TOP_FEATURES = 3


def registered_model_name(domain: str) -> str:
    """The MLflow registered model of a domain: the one naming convention of every layer."""
    return f"patternalarm-{domain}"


class NoChampion(LookupError):
    """A domain has no model with the `champion` alias yet; answered with 503."""

    def __init__(self, domain: str, reason: str = ""):
        name = registered_model_name(domain)
        super().__init__(
            f"no champion model for {domain!r} yet ({name} has no `champion` alias"
            f"{': ' + reason if reason else ''}). Train and promote one: "
            f"`patternalarm train --domain {domain} --promote` "
            f"(or trigger the retrain DAG in Airflow).")


class Champion(Protocol):
    name: str
    version: str
    threshold: float
    feature_names: Sequence[str]

    def score(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of an anomaly (n,) and per-feature log-odds contributions (n, f)."""
        ...


def _invalid(loc: tuple, msg: str) -> RequestValidationError:
    # The same shape as FastAPI's own 422s, so clients parse one format of field errors.
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg}])


def _event_features(item: PredictRequest, names: Sequence[str], loc: tuple) -> list[float]:
    """The last event's features, from the entity's history by the stream's own engine."""
    engine = feature_engines.ENGINES[item.domain]
    events = sorted(item.events, key=lambda e: e["event_time"])
    columns = [[e["payload"].get(field) for e in events] for field in engine.inputs]
    vectors = feature_engines.fold(item.domain, {}, [e["entity_id"] for e in events],
                                   [e["event_time"] for e in events], columns)
    computed = dict(zip(engine.names, vectors[-1].tolist(), strict=True))
    missing = [n for n in names if n not in computed]
    if missing:
        raise _invalid((*loc, "events"), f"the model uses features that events do not give "
                                         f"({', '.join(missing)}); send `features` instead")
    return [computed[n] for n in names]


def feature_matrix(champion: Champion, items: Sequence[PredictRequest], loc: tuple,
                   positions: Sequence[int] | None = None) -> np.ndarray:
    """Rows in the model's feature order; `positions` locate items of a batch in errors."""
    names = list(champion.feature_names)
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
                           f"missing features of {champion.name} v{champion.version}: "
                           f"{', '.join(missing)}") from None
        if len(given) != len(names):
            unknown = sorted(set(given) - set(names))
            raise _invalid((*where, "features"), f"unknown features: {', '.join(unknown)}")
    return matrix


def predict_many(champion: Champion, items: Sequence[PredictRequest], loc: tuple,
                 positions: Sequence[int] | None = None) -> list[Prediction]:
    """Score items of one domain in one call: the same answers as scoring them one by one."""
    matrix = feature_matrix(champion, items, loc, positions)
    probabilities, contributions = champion.score(matrix)
    names = list(champion.feature_names)
    top = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :TOP_FEATURES]
    domain = items[0].domain
    threshold = float(champion.threshold)
    answers = []
    for row, probability in enumerate(probabilities.tolist()):
        answers.append(Prediction(
            domain=domain, probability=probability, anomaly=probability >= threshold,
            threshold=threshold, model_name=champion.name, model_version=champion.version,
            top_features=[Contribution(feature=names[j], value=matrix[row, j],
                                       contribution=contributions[row, j])
                          for j in top[row].tolist()]))
    return answers


class ModelProvider:
    """Each domain's champion, loaded from the registry on first use.

    Reloading when the alias moves is the registry scorer's job (it checks in the background),
    so a request never waits on MLflow once its domain is loaded.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._scorers: dict[str, Champion] = {}
        self._lock = threading.Lock()

    def champion(self, domain: str) -> Champion:
        scorer = self._scorers.get(domain)
        if scorer is None:
            with self._lock:  # concurrent first requests load the model once
                scorer = self._scorers.get(domain) or self._load(domain)
                self._scorers[domain] = scorer
        return scorer

    def versions(self) -> dict[str, str | None]:
        return {d: (s.version if (s := self._scorers.get(d)) else None) for d in DOMAINS}

    def loaded(self) -> dict[str, tuple[str, str]]:
        return {d: (s.name, s.version) for d, s in self._scorers.items()}

    def _load(self, domain: str) -> Champion:
        raise NoChampion(domain)

    def close(self) -> None:
        self._scorers.clear()
