"""Champion-model scoring of a micro-batch's feature rows, without a Spark job per event.

The driver checks each domain's `champion` alias every few seconds (`ModelWatch`) and compiles
a new version once into the local scorer, which scores the batch's feature rows on the driver
(they are there already: the sink collects each micro-batch once), so a model swap needs no
restart and every incident names its version. The Spark PipelineModel path (setting
`stream_scorer=spark`) applies the same version with `transform` once per micro-batch instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pandas as pd

from models.features import FEATURES
from patternalarm.settings import model_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    domain: str
    version: str
    scorer: object = field(compare=False, repr=False)  # models.local_scorer.LocalScorer

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

        from models.registry import client_for, compile_version

        client = client_for(self.tracking_uri)
        found = {}
        for domain in self.domains:
            try:
                version = client.get_model_version_by_alias(model_name(domain), "champion")
            except MlflowException as exc:
                known = self.current.get(domain)
                if exc.get_http_status_code() >= 500 and known is not None:
                    found[domain] = known  # registry unreachable: keep scoring with what we had
                continue  # otherwise no model yet: rules only for this domain
            known = self.current.get(domain)
            if known is not None and known.version == str(version.version):
                found[domain] = known
                continue
            found[domain] = Champion(domain, str(version.version),
                                     compile_version(client, version))
            log.info("domain %s scores with %s v%s", domain, model_name(domain),
                     version.version)
        return found


def score_features(frame: pd.DataFrame, champions: dict[str, Champion]) -> pd.DataFrame:
    """Rows the champion labels positive (p1 over its threshold), with the score."""
    hits = []
    for domain, rows in frame.groupby("domain", sort=False):
        champion = champions.get(domain)
        if champion is None:
            continue
        matrix = pd.DataFrame(list(rows["features"]), columns=list(FEATURES[domain]))
        p1, label = champion.scorer.score(matrix)
        positive = label.astype(bool)
        hits.append(rows.loc[positive, ["domain", "entity_id", "event_id", "event_time"]]
                    .assign(score=p1[positive]))
    return pd.concat(hits) if hits else pd.DataFrame(
        columns=["domain", "entity_id", "event_id", "event_time", "score"])
