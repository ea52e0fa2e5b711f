"""Champion-model scoring of a micro-batch's feature rows, without a Spark job per event.

The driver checks each domain's `champion` alias every few seconds (`ModelWatch`); executors
score their partitions with the local scorer compiled from that exact version (cached per
worker process), so a model swap needs no restart and every incident names its version. The
Spark PipelineModel path (setting `stream_scorer=spark`) applies the same version with
`transform` once per micro-batch instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from models.features import FEATURES
from patternalarm.settings import model_name

log = logging.getLogger(__name__)

SCORED = ("domain string, entity_id string, event_id string, event_time long, "
          "broker_time long, score double, top_features string")


@dataclass(frozen=True)
class Champion:
    domain: str
    version: str

    @property
    def name(self) -> str:
        return model_name(self.domain)


class ModelWatch:
    """The champion version of each domain, re-read from the registry every `refresh_s`."""

    def __init__(self, tracking_uri: str, domains: list[str], refresh_s: float) -> None:
        self.tracking_uri, self.domains, self.refresh_s = tracking_uri, domains, refresh_s
        self._checked = float("-inf")
        self.current: dict[str, Champion] = {}

    def champions(self) -> dict[str, Champion]:
        if time.monotonic() - self._checked >= self.refresh_s:
            self._checked = time.monotonic()
            self.current = self._read()
        return self.current

    def _read(self) -> dict[str, Champion]:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        found = {}
        for domain in self.domains:
            try:
                version = client.get_model_version_by_alias(model_name(domain), "champion")
            except MlflowException:
                continue  # no model yet: rules only for this domain
            found[domain] = Champion(domain, version.version)
            if self.current.get(domain) != found[domain]:
                log.info("domain %s scores with %s v%s", domain, model_name(domain),
                         version.version)
        return found


_COMPILED: dict[tuple[str, str], object] = {}


def _scorer(tracking_uri: str, champion: Champion):
    """The compiled local scorer of one version, once per worker process."""
    key = (champion.name, champion.version)
    if key not in _COMPILED:
        from models.registry import client_for, compile_version

        client = client_for(tracking_uri)
        _COMPILED[key] = compile_version(client, client.get_model_version(*key))
    return _COMPILED[key]


def score_frames(frames: Iterator[pd.DataFrame], tracking_uri: str,
                 champions: dict[str, Champion]) -> Iterator[pd.DataFrame]:
    """Rows the champion labels positive (p1 over its threshold), with the score."""
    for frame in frames:
        for domain, rows in frame.groupby("domain", sort=False):
            champion = champions.get(domain)
            if champion is None:
                continue
            scorer = _scorer(tracking_uri, champion)
            matrix = pd.DataFrame(list(rows["features"]), columns=list(FEATURES[domain]))
            p1, label = scorer.score(matrix)
            hits = rows.loc[label.astype(bool)]
            if hits.empty:
                continue
            yield pd.DataFrame({
                "domain": domain, "entity_id": hits["entity_id"].to_numpy(),
                "event_id": hits["event_id"].to_numpy(),
                "event_time": hits["event_time"].to_numpy(),
                "broker_time": hits["broker_time"].to_numpy(),
                "score": p1[label.astype(bool)], "top_features": ""})
