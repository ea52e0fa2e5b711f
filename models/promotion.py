"""Champion/challenger promotion: a new version takes the ``champion`` alias only if it beats
the current champion on the same holdout.

"The same holdout" is the new run's: the champion is loaded from the registry and scored on
exactly the rows the new model was evaluated on, so both numbers answer the same question on
data neither model was trained on. The comparison metric is PR-AUC (average precision), the one
that matters for rare positives; ties keep the current champion.

For a generated domain, the decision also looks at what an analyst would see: the model's
incident-level precision on the evaluation replay at the live anomaly rate
(``models.offline``). The new version must reach the target and do no worse than the champion
(with its own threshold) on the same replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame

from models.evaluation import pr_auc
from models.pipeline import LABEL, positive_probability
from models.registry import CHAMPION

CHALLENGER = "challenger"
FILL_TAG = "missing_fill_value"
METRIC = "pr_auc"


@dataclass(frozen=True)
class ReplayGate:
    """Incident-level precision of the model detector on one replay (None: no incident)."""

    target: float
    new_precision: float | None
    champion_precision: float | None = None


@dataclass(frozen=True)
class Decision:
    alias: str                       # CHAMPION or CHALLENGER
    new_score: float
    champion_score: float | None     # None: no champion, or it could not be scored
    champion_version: str | None
    reason: str
    replay: ReplayGate | None = None


def _precision(value: float | None) -> str:
    return "no incident" if value is None else f"{value:.3f}"


def decide(new_score: float, champion_version: str | None, champion_score: float | None,
           unscorable: str | None = None, replay: ReplayGate | None = None) -> Decision:
    """The rule itself, free of I/O."""
    if replay is not None:
        new = replay.new_precision
        if new is None or new < replay.target:
            return Decision(CHALLENGER, new_score, champion_score, champion_version,
                            f"replay incident precision {_precision(new)} below the target "
                            f"{replay.target}", replay)
        old = replay.champion_precision
        if champion_version is not None and old is not None and new < old:
            return Decision(CHALLENGER, new_score, champion_score, champion_version,
                            f"replay incident precision {new:.3f} < champion "
                            f"v{champion_version} {old:.3f}", replay)
    decision = _by_score(new_score, champion_version, champion_score, unscorable)
    if replay is None:
        return decision
    versus = (f", champion {_precision(replay.champion_precision)}"
              if champion_version is not None else "")
    return Decision(decision.alias, new_score, champion_score, champion_version,
                    f"{decision.reason}; replay incident precision "
                    f"{replay.new_precision:.3f} (target {replay.target}{versus})", replay)


def _by_score(new_score: float, champion_version: str | None, champion_score: float | None,
              unscorable: str | None) -> Decision:
    if champion_version is None:
        return Decision(CHAMPION, new_score, None, None, "no champion yet")
    if champion_score is None:
        # Nothing to compare with: a human decides, the running champion stays.
        return Decision(CHALLENGER, new_score, None, champion_version,
                        f"champion v{champion_version} cannot be scored here: {unscorable}")
    if new_score > champion_score:
        return Decision(CHAMPION, new_score, champion_score, champion_version,
                        f"{METRIC} {new_score:.4f} > champion v{champion_version} "
                        f"{champion_score:.4f}")
    return Decision(CHALLENGER, new_score, champion_score, champion_version,
                    f"{METRIC} {new_score:.4f} <= champion v{champion_version} "
                    f"{champion_score:.4f}")


def _current_champion(client: MlflowClient, name: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def score_version(client: MlflowClient, name: str, version: str, holdout: DataFrame
                  ) -> tuple[float | None, str | None]:
    """(PR-AUC of that version on ``holdout``, None) or (None, why it cannot be scored).

    The version's own features are taken from the holdout rows and filled with its own
    missing-value fill (version tag ``missing_fill_value``), as it was trained.
    """
    model = mlflow.spark.load_model(f"models:/{name}/{version}")
    needed = model.stages[0].getInputCols()
    missing = sorted(set(needed) - set(holdout.columns))
    if missing:
        return None, f"its features {missing} are not in this training set"
    fill = float(client.get_model_version(name, version).tags.get(FILL_TAG, 0.0))
    rows = holdout.fillna(fill, subset=needed)
    scored = positive_probability(model, rows).select("score", LABEL).toPandas()
    return pr_auc(scored["score"].to_numpy(), scored[LABEL].to_numpy()), None


def replay_precision(client: MlflowClient, name: str, version: str, domain: str, replay
                     ) -> float | None:
    """The model detector's incident precision of that version (its own threshold) on the
    replay: what it would have shown an analyst."""
    from models import offline
    from models.incidents import MODEL_DETECTOR
    from models.registry import compile_version

    scorer = compile_version(client, client.get_model_version(name, version))
    quality = offline.evaluate(domain, scorer, replay, version).quality.get(MODEL_DETECTOR)
    return quality.precision if quality else None


def promote(client: MlflowClient, name: str, version: str, new_score: float,
            holdout: DataFrame, replay_gate: tuple[str, object, ReplayGate] | None = None
            ) -> Decision:
    """Decide, move the alias, and log the decision and both scores to the active run.

    ``replay_gate``: (domain, the evaluation replay, the new version's figures on it); the
    champion is evaluated on the same replay."""
    champion = _current_champion(client, name)
    score, unscorable = (score_version(client, name, champion, holdout) if champion
                         else (None, None))
    gate = None
    if replay_gate is not None:
        domain, replay, gate = replay_gate
        if champion is not None:
            gate = ReplayGate(gate.target, gate.new_precision,
                              replay_precision(client, name, champion, domain, replay))
    decision = decide(new_score, champion, score, unscorable, gate)
    client.set_registered_model_alias(name, decision.alias, version)
    client.set_model_version_tag(name, version, "promotion", decision.reason)
    mlflow.log_params({"promotion_alias": decision.alias,
                       "promotion_champion_version": decision.champion_version or "none"})
    mlflow.set_tag("promotion_reason", decision.reason)
    mlflow.log_metric(f"promotion_new_{METRIC}", new_score)
    if decision.champion_score is not None:
        mlflow.log_metric(f"promotion_champion_{METRIC}", decision.champion_score)
    if gate is not None and gate.champion_precision is not None:
        mlflow.log_metric("promotion_champion_replay_precision", gate.champion_precision)
    return decision
