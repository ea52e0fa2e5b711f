"""Per-entity features: one definition for the stream, training and the API.

Each domain's engine (one module per domain) computes, for a batch of events grouped by
entity in event-time order, every event's feature vector from the entity's history up to and
including it, and carries each entity's state to the next batch. The streaming job keeps a
:class:`State` per bucket in Spark state; training replays history through the same engines
(`compute`) and the API folds a request's events (`fold` on a fresh state), so a model never
trains on features the stream would compute differently.

State is columnar (models.features.state): scalars and bounded window tails as numpy arrays,
so it pickles as a few flat buffers. The per-event recurrences run in numba kernels over those
arrays; tests/feature_reference.py holds the plain per-event definitions they must match.

Late events: an event older than its entity's newest (it arrived after a later one, inside
the allowed lateness) is folded at the entity's newest time, t = max(t, last_t). Its features
then describe it as if it had just happened; windows never reorder. Training (`compute`) and
the stream apply the rule alike, as both go through `fold`.

    state = new_state("payments")
    matrix = fold("payments", state, entity_ids, times_ms, [payload columns in ENGINES.inputs])
    state.entity_ids, state.last_t     # for the stream's silence rule
    state.evict(idle_before_ms)        # forget idle entities; returns their ids
    len(state), state.nbytes           # metrics
    warm_up()                          # compile (or load) the kernels before a query starts
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from models.features import gaming, iot, payments
from models.features.base import Engine, objects
from models.features.state import State

__all__ = ["ENGINES", "FEATURES", "Engine", "State", "compute", "fold", "new_state", "warm_up"]

ENGINES: dict[str, Engine] = {e.domain: e for e in (payments.ENGINE, gaming.ENGINE, iot.ENGINE)}
FEATURES: dict[str, tuple[str, ...]] = {d: e.names for d, e in ENGINES.items()}


def new_state(domain: str) -> State:
    """An empty state for the domain's entities (picklable)."""
    engine = ENGINES[domain]
    return State(domain, engine.scalars, engine.tails)


def warm_up() -> None:
    """Compile every domain's kernels, or load them from numba's cache. Called on the driver
    before a query starts, it fills the cache that local workers then load (~1 s, not ~10 s)."""
    for domain, engine in ENGINES.items():
        fold(domain, new_state(domain), ["warm-up"], [0], [[1.0]] * len(engine.inputs))


def fold(domain: str, state: State, entity_ids: Sequence[str], times_ms: Sequence[int],
         columns: Iterable[Sequence]) -> np.ndarray:
    """Feature matrix of events, rows aligned with the inputs; updates `state`.

    Events come grouped by entity, each entity's in event-time order (the stream sorts by
    entity, event time and offset); an entity in more than one run is regrouped, keeping the
    order of its events. `columns` are the engine's inputs, one sequence per input, aligned with
    the events.
    """
    engine = ENGINES[domain]
    if state.domain != domain:
        raise ValueError(f"a {state.domain} state cannot fold {domain} events")
    entities, distinct = pd.factorize(objects(entity_ids))
    times = np.asarray(times_ms, dtype=np.int64)
    columns = list(columns)
    if len(columns) != len(engine.inputs) or any(
            len(c) != len(entities) for c in [times, *columns]):
        raise ValueError(f"{domain}: expected {len(engine.inputs)} input columns of "
                         f"{len(entities)} values, aligned with the entity ids")
    if not len(entities):
        return np.empty((0, len(engine.names)), dtype=np.float64)
    prepared = engine.prepare(columns)
    starts = np.flatnonzero(np.r_[True, entities[1:] != entities[:-1]])
    order = None
    if len(starts) != len(distinct):  # an entity in more than one run
        order = np.argsort(entities, kind="stable")
        entities, times = entities[order], times[order]
        prepared = tuple(a[order] for a in prepared)
        starts = np.flatnonzero(np.r_[True, entities[1:] != entities[:-1]])
    rows = state.rows(np.asarray(distinct, dtype=str))
    out = engine.run(state, rows, np.r_[starts, len(entities)], times, *prepared)
    if order is not None:
        out[order] = out.copy()
    return out


def compute(domain: str, events: pd.DataFrame, state: State | None = None) -> pd.DataFrame:
    """Features of every event of a history (columns: entity_id, event_time, the inputs).

    Returns the events' event_id/entity_id/event_time with one column per feature, in the
    events' original order. Pass a `state` to continue from (and update) earlier history.
    """
    engine = ENGINES[domain]
    ordered = events.sort_values(["entity_id", "event_time"], kind="stable")
    missing = np.full(len(ordered), None, dtype=object)
    matrix = fold(domain, new_state(domain) if state is None else state,
                  ordered["entity_id"].to_numpy(), ordered["event_time"].to_numpy(),
                  [ordered[c].to_numpy() if c in ordered else missing for c in engine.inputs])
    features = pd.DataFrame(matrix, columns=list(engine.names), index=ordered.index)
    keep = [c for c in ("event_id", "entity_id", "event_time") if c in events]
    return pd.concat([ordered[keep], features], axis=1).loc[events.index]
