"""The columnar feature engine against the plain per-event fold (tests/feature_reference.py).

Streams come from the generator (anomaly episodes included), made harder: squeezed in time so
windows fill to their caps, ties in event time, missing optional fields, and late arrivals.
The stream sees them in arrival order, cut into micro-batches, each sorted by entity and event
time, with its state pickled between batches and idle entities evicted; the reference folds
the same sequence one event at a time.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from models.features import ENGINES, compute, fold, new_state, warm_up
from models.offline import generate
from tests import feature_reference

TOLERANCE = 1e-9
OPTIONAL = {"payments": ("country", "merchant_id", "lat", "lon", "channel"),
            "gaming": ("speed", "reaction_ms", "hit", "headshot", "resource_gain"),
            "iot": ("battery_pct",)}


def stream(domain: str, seed: int, squeeze: float, entities: int = 12,
           minutes: float = 40) -> pd.DataFrame:
    """Generated events in event-time order, `squeeze` times denser, with ties and gaps."""
    rng = np.random.default_rng(seed)
    replay = generate(domain, seed=seed, minutes=minutes, entities=entities, anomaly_rate=0.02)
    events = replay.events.sort_values(["entity_id", "event_time"], kind="stable",
                                       ignore_index=True)
    t = replay.start_ms + ((events["event_time"] - replay.start_ms) / squeeze).astype(np.int64)
    same = np.r_[False, events["entity_id"].to_numpy()[1:] == events["entity_id"].to_numpy()[:-1]]
    tie = same & (rng.random(len(events)) < 0.15)
    t = t.to_numpy()
    for i in np.flatnonzero(tie):  # ties chain: the entity's previous time, once assigned
        t[i] = t[i - 1]
    events["event_time"] = t
    for column in OPTIONAL[domain]:
        if column in events:
            events[column] = events[column].astype(object).where(
                rng.random(len(events)) >= 0.1, None)
    return events.sort_values("event_time", kind="stable", ignore_index=True)


def arrival(events: pd.DataFrame, seed: int, late_ms: int) -> pd.DataFrame:
    """Events in the order a broker would deliver them when some are held up to `late_ms`."""
    rng = np.random.default_rng(seed)
    delay = np.where(rng.random(len(events)) < 0.2, rng.integers(0, late_ms + 1, len(events)), 0)
    return events.iloc[np.argsort(events["event_time"].to_numpy() + delay, kind="stable")]


def columns(domain: str, batch: pd.DataFrame) -> list:
    return [batch[c].to_numpy() if c in batch else [None] * len(batch)
            for c in ENGINES[domain].inputs]


def micro_batches(events: pd.DataFrame, cuts) -> list[pd.DataFrame]:
    """Consecutive slices at `cuts`, each sorted as the stream sorts a micro-batch."""
    bounds = [0, *cuts, len(events)]
    return [events.iloc[a:b].sort_values(["entity_id", "event_time"], kind="stable")
            for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def run_engine(domain: str, batches, evict_at=None, idle_ms=0) -> np.ndarray:
    state, out = new_state(domain), []
    for k, batch in enumerate(batches):
        out.append(fold(domain, state, batch["entity_id"].to_numpy(),
                        batch["event_time"].to_numpy(), columns(domain, batch)))
        state = pickle.loads(pickle.dumps(state))  # as Spark keeps it between batches
        if k == evict_at:
            state.evict(int(batch["event_time"].max()) - idle_ms)
    return np.concatenate(out)


def run_reference(domain: str, batches, evict_at=None, idle_ms=0) -> np.ndarray:
    states, out = {}, []
    for k, batch in enumerate(batches):
        cols = [list(c) for c in columns(domain, batch)]
        out.append(feature_reference.fold(domain, states, batch["entity_id"].tolist(),
                                          batch["event_time"].tolist(), cols))
        if k == evict_at:
            cutoff = int(batch["event_time"].max()) - idle_ms
            states = {e: s for e, s in states.items() if s["last_t"] >= cutoff}
    return np.concatenate(out)


def assert_same(engine: np.ndarray, reference: np.ndarray, domain: str) -> None:
    diff = np.abs(engine - reference)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    assert diff.max() <= TOLERANCE, (
        f"{domain}: {ENGINES[domain].names[worst[1]]} of row {worst[0]}: "
        f"{engine[worst]} != {reference[worst]}")


# Windows fill to their caps only in a stream squeezed this hard.
CAPS = {"payments": {"count_1h": 300}, "gaming": {"shots_window": 20}, "iot": {}}


@pytest.mark.parametrize("domain", sorted(ENGINES))
@pytest.mark.parametrize(("squeeze", "entities", "minutes"), [(1, 8, 150), (40, 12, 40),
                                                             (150, 3, 400)])
def test_batches_in_arrival_order_with_late_events_match_the_reference(domain, squeeze,
                                                                       entities, minutes):
    events = arrival(stream(domain, seed=squeeze, squeeze=squeeze, entities=entities,
                            minutes=minutes), seed=5, late_ms=int(180_000 / squeeze))
    rng = np.random.default_rng(squeeze)
    cuts = np.unique(rng.integers(1, len(events), len(events) // 8))
    batches = micro_batches(events, cuts)
    evict_at = len(batches) // 2
    idle_ms = int(300_000 / squeeze)
    engine = run_engine(domain, batches, evict_at, idle_ms)
    assert_same(engine, run_reference(domain, batches, evict_at, idle_ms), domain)
    if squeeze == 150:
        names = ENGINES[domain].names
        assert {f: engine[:, names.index(f)].max() for f in CAPS[domain]} == CAPS[domain]


def test_every_gaming_window_at_its_cap_matches_the_reference():
    """Generated players never loot a hundred times a minute; this one does."""
    rng = np.random.default_rng(9)
    n = 1_500
    events = pd.DataFrame({
        "entity_id": rng.choice(["p1", "p2"], n),
        "event_time": 1_700_000_000_000 + np.sort(rng.integers(0, 240_000, n)),
        "action": rng.choice(["shoot", "move", "loot", "chat"], n, p=[0.3, 0.2, 0.45, 0.05]),
        "speed": rng.gamma(2.0, 3.0, n), "reaction_ms": rng.gamma(3.0, 60.0, n),
        "hit": rng.random(n) < 0.5, "headshot": rng.random(n) < 0.2,
        "resource_gain": rng.integers(0, 50, n).astype(float)})
    batches = micro_batches(arrival(events, seed=1, late_ms=3_000), range(100, n, 100))
    engine = run_engine("gaming", batches)
    assert_same(engine, run_reference("gaming", batches), "gaming")
    names = ENGINES["gaming"].names
    assert engine[:, names.index("loot_count_1m")].max() == 100


@pytest.mark.parametrize("domain", sorted(ENGINES))
def test_one_event_per_batch_matches_the_reference(domain):
    events = arrival(stream(domain, seed=11, squeeze=20, entities=6, minutes=30), seed=2,
                     late_ms=10_000)
    batches = micro_batches(events, range(1, len(events)))
    assert_same(run_engine(domain, batches), run_reference(domain, batches), domain)


@pytest.mark.parametrize("domain", sorted(ENGINES))
def test_a_batch_boundary_anywhere_gives_the_one_batch_result(domain):
    events = stream(domain, seed=3, squeeze=30, entities=5, minutes=24)
    whole = run_engine(domain, micro_batches(events, []))
    assert_same(whole, run_reference(domain, micro_batches(events, [])), domain)
    for cut in range(1, len(events)):
        batches = micro_batches(events, [cut])
        order = pd.concat(batches).index
        split = pd.DataFrame(run_engine(domain, batches), index=order).loc[
            micro_batches(events, [])[0].index].to_numpy()
        assert_same(split, whole, domain)


def test_a_late_event_is_folded_at_its_entitys_newest_time():
    t0 = 1_700_000_000_000
    state = new_state("iot")
    fold("iot", state, ["d1"], [t0 + 60_000], [[20.0], [90.0]])
    late = fold("iot", state, ["d1"], [t0], [[21.0], [90.0]])
    assert late[0, ENGINES["iot"].names.index("secs_since_last")] == 0.0
    assert state.last_t.tolist() == [t0 + 60_000]


def test_entities_out_of_their_runs_are_regrouped_in_order():
    events = stream("payments", seed=4, squeeze=10, entities=6, minutes=20)
    together = compute("payments", events)
    interleaved = events.sort_values("event_time", kind="stable")
    state = new_state("payments")
    apart = fold("payments", state, interleaved["entity_id"].to_numpy(),
                 interleaved["event_time"].to_numpy(), columns("payments", interleaved))
    assert_same(apart, together.loc[interleaved.index, list(ENGINES["payments"].names)]
                .to_numpy(), "payments")


def test_state_reports_entities_last_times_and_evicts_the_idle():
    state = new_state("gaming")
    fold("gaming", state, ["b", "a", "c"], [3_000, 1_000, 2_000],
         [["shoot", "move", "loot"], [None, 5.0, None], [80.0, None, None], [True, None, None],
          [False, None, None], [None, None, 7]])
    assert state.entity_ids.tolist() == ["a", "b", "c"]
    assert state.last_t.tolist() == [1_000, 3_000, 2_000]
    assert state.last_t_of(np.array(["c", "zz"])).tolist()[0] == 2_000.0
    assert state.evict(2_000).tolist() == ["a"]
    assert len(state) == 2 and state.entity_ids.tolist() == ["b", "c"]
    assert state.nbytes > 0
    restored = pickle.loads(pickle.dumps(state))
    assert restored.last_t.tolist() == [3_000, 2_000]


def test_state_pickles_as_flat_arrays():
    events = stream("payments", seed=8, squeeze=5, entities=50, minutes=20)
    state = new_state("payments")
    compute("payments", events, state)
    blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    # A few arrays, not one object per entity: the pickle is about the arrays' size.
    assert len(blob) < 1.2 * state.nbytes + 4_000


def test_warm_up_folds_an_event_of_every_domain():
    warm_up()  # raises if a kernel does not compile
