"""The champion model from the MLflow registry, compiled into a :class:`LocalScorer`.

A registered model is promoted by moving its alias (``champion``); :class:`ChampionScorer`
watches that alias and swaps the compiled scorer in place, so the API and the stream pick up a
new model without a restart. A threshold chosen at training time travels as the model version
tag ``threshold`` (label = p1 > threshold); without it, labels follow the saved Spark model.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from types import TracebackType

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from models.local_scorer import LocalScorer, Rows, compile_model
from patternalarm import settings as settings_mod

log = logging.getLogger(__name__)

CHAMPION = "champion"
THRESHOLD_TAG = "threshold"


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri or settings_mod.get().tracking_uri)


def compile_version(client: MlflowClient, version: ModelVersion) -> LocalScorer:
    """Download one model version's artifacts and compile its Spark model; nothing is kept."""
    with tempfile.TemporaryDirectory(prefix="pa-model-") as tmp:
        # The version's own artifact location, not a models:/ URI: that one resolves through
        # the process-wide registry URI, whatever server this client talks to.
        source = client.get_model_version_download_uri(version.name, version.version)
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=tmp, tracking_uri=client.tracking_uri))
        flavors = Model.load(local / "MLmodel").flavors
        if "spark" not in flavors:
            raise ValueError(f"{version.name} v{version.version} has no spark flavor "
                             f"(flavors: {sorted(flavors)})")
        threshold = version.tags.get(THRESHOLD_TAG)
        return compile_model(local / flavors["spark"]["model_data"],
                             threshold_p1=float(threshold) if threshold is not None else None)


def load_champion(name: str, *, alias: str = CHAMPION,
                  client: MlflowClient | None = None) -> tuple[LocalScorer, str]:
    """(scorer, version) of the version that carries ``alias``."""
    client = client or client_for()
    version = client.get_model_version_by_alias(name, alias)
    return compile_version(client, version), version.version


class ChampionScorer:
    """Scores with the current champion; :meth:`refresh` (or the thread of :meth:`start`,
    every ``refresh_interval_s``) follows the alias when it moves.

    Scoring never waits for a refresh: the (version, scorer) pair is replaced in one assignment,
    and each call uses the pair it read first, so a result always names the model that made it.
    """

    def __init__(self, name: str, *, alias: str = CHAMPION, refresh_interval_s: float = 10.0,
                 client: MlflowClient | None = None) -> None:
        self.name, self.alias, self.refresh_interval_s = name, alias, refresh_interval_s
        self._client = client or client_for()
        scorer, version = load_champion(name, alias=alias, client=self._client)
        self._current: tuple[str, LocalScorer] = (version, scorer)
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str:
        return self._current[0]

    @property
    def scorer(self) -> LocalScorer:
        return self._current[1]

    def score(self, rows: Rows) -> tuple[np.ndarray, np.ndarray, str]:
        """(p1, label, model version)."""
        version, scorer = self._current
        p1, label = scorer.score(rows)
        return p1, label, version

    def predict_proba(self, rows: Rows) -> np.ndarray:
        return self.score(rows)[0]

    def refresh(self) -> bool:
        """Load the version the alias points to if it changed; True when swapped."""
        with self._refresh_lock:
            target = self._client.get_model_version_by_alias(self.name, self.alias)
            if target.version == self.version:
                return False
            scorer = compile_version(self._client, target)
            previous = self.version
            self._current = (target.version, scorer)
        log.info("model %s@%s: version %s -> %s", self.name, self.alias, previous,
                 target.version)
        return True

    def start(self) -> None:
        """Check the alias in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name=f"champion-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.refresh_interval_s):
            try:
                self.refresh()
            except Exception:
                # Keep serving the current model while the registry is unreachable.
                log.exception("checking %s@%s failed; keeping version %s", self.name,
                              self.alias, self.version)

    def __enter__(self) -> ChampionScorer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
