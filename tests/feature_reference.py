"""The test oracle for models.features: the plain per-event fold the columnar engine replaced.

Each step function folds one event into a dict state and returns its feature vector; these are
the definitions the engine must reproduce (tests/unit/test_features_engine.py holds it to them on
generated streams). One rule is applied here as in the engine: an event older than its
entity's newest is folded at the newest time, t = max(t, last_t).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

State = dict


def _ewma(old: float | None, value: float, alpha: float) -> float:
    return value if old is None else old + alpha * (value - old)


def _trim(window: list, now_ms: int, span_ms: int, cap: int) -> None:
    """Keep the newest `cap` entries younger than `span_ms` (each a list starting with a time)."""
    cut = now_ms - span_ms
    drop = 0
    while drop < len(window) and window[drop][0] < cut:
        drop += 1
    drop = max(drop, len(window) - cap)
    if drop:
        del window[:drop]


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 12_742.0 * math.asin(min(1.0, math.sqrt(h)))


# --- payments --------------------------------------------------------------------------------

SMALL_CHARGE = 3.0      # card-testing charges stay under a few units
_HOUR_MS = 3_600_000


def _payments(state: State, t: int, amount: float, country: str | None, merchant: str | None,
              lat: float | None, lon: float | None, channel: str | None) -> list[float]:
    recent = state.setdefault("recent", [])  # [t, small charge?, country, merchant]
    last_t = state.get("last_t")
    gap_s = (t - last_t) / 1000.0 if last_t is not None else 86_400.0
    seen = state.get("n", 0)
    n_amounts = state.get("n_amounts", 0)
    log_amount = math.log1p(amount)
    mean, m2 = state.get("mean", 0.0), state.get("m2", 0.0)
    std = math.sqrt(m2 / (n_amounts - 1)) if n_amounts > 1 else 0.0
    amount_z = (log_amount - mean) / max(std, 0.25) if n_amounts >= 3 else 0.0
    typical = state.get("typical")
    amount_ratio = amount / typical if typical else 1.0

    travel_kmh = 0.0
    if lat is not None and lon is not None and state.get("lat") is not None:
        hours = max((t - state["geo_t"]) / 3_600_000.0, 1 / 60)  # a minute at least
        travel_kmh = _km(state["lat"], state["lon"], lat, lon) / hours

    # Small for this card: a card that always spends little is not testing itself.
    small = amount < SMALL_CHARGE and (typical is None or amount < 0.3 * typical)
    recent.append([t, small, country or "", merchant or ""])
    _trim(recent, t, _HOUR_MS, cap=300)
    count_1m = count_10m = small_5m = 0
    countries: set[str] = set()
    merchants_10m: set[str] = set()
    for when, was_small, ctry, merch in recent:
        age = t - when
        countries.add(ctry)
        if age <= 600_000:
            count_10m += 1
            merchants_10m.add(merch)
            if age <= 300_000 and was_small:
                small_5m += 1
            if age <= 60_000:
                count_1m += 1
    since_small = state.get("small_t")
    secs_since_small = (t - since_small) / 1000.0 if since_small is not None else 86_400.0

    # Update after computing, so an event's features describe it against its past.
    seen += 1
    state.update(n=seen, last_t=t)
    if small:
        # Test charges are not the card's spending: keep them out of its amount baseline.
        state["small_t"] = t
    else:
        delta = log_amount - mean
        n_amounts = state.get("n_amounts", 0) + 1
        mean += delta / n_amounts
        state.update(n_amounts=n_amounts, mean=mean, m2=m2 + delta * (log_amount - mean),
                     typical=_ewma(typical, amount, 0.1))
    if lat is not None and lon is not None:
        state.update(lat=lat, lon=lon, geo_t=t)
    return [count_1m, count_10m, len(recent), small_5m, amount, amount_ratio, amount_z,
            len(countries), len(merchants_10m), min(gap_s, 86_400.0), travel_kmh,
            1.0 if channel == "ecom" else 0.0, 1.0 if small else 0.0,
            min(secs_since_small, 86_400.0), min(seen - 1, 1_000)]


# --- gaming ----------------------------------------------------------------------------------

_SHOTS = 20


def _gaming(state: State, t: int, action: str, speed: float | None, reaction: float | None,
            hit: bool | None, headshot: bool | None, gain: float | None) -> list[float]:
    shots = state.setdefault("shots", [])    # [t, hit, headshot, reaction]
    moves = state.setdefault("moves", [])    # [t, speed]
    loot = state.setdefault("loot", [])      # [t, gain]
    last_t = state.get("last_t")
    gap_s = (t - last_t) / 1000.0 if last_t is not None else 86_400.0
    if action == "shoot":
        shots.append([t, 1.0 if hit else 0.0, 1.0 if headshot else 0.0, reaction or 0.0])
    elif action == "move":
        moves.append([t, speed or 0.0])
    elif action == "loot":
        loot.append([t, gain or 0.0])
    # Two minutes of shots: long enough for a burst of aimed shots, short enough that an
    # episode's shots stop colouring the player's ordinary play soon after it ends.
    _trim(shots, t, 120_000, cap=_SHOTS)
    _trim(moves, t, 60_000, cap=30)
    _trim(loot, t, 60_000, cap=100)
    n_shots = len(shots)
    hits = sum(s[1] for s in shots)
    hit_rate = hits / n_shots if n_shots else 0.0
    headshot_rate = sum(s[2] for s in shots) / hits if hits else 0.0
    reactions = [s[3] for s in shots[-10:]]
    fast_reactions = sum(1 for r in reactions if r < 100.0)
    mean_reaction = sum(reactions) / len(reactions) if reactions else 0.0
    max_speed = max((m[1] for m in moves), default=0.0)
    typical_speed = state.get("speed")
    speed_ratio = (speed or 0.0) / typical_speed if typical_speed and action == "move" else 1.0
    if action == "move" and speed is not None:
        state["speed"] = _ewma(typical_speed, speed, 0.05)
    state["last_t"] = t
    return [1.0 if action == "shoot" else 0.0, 1.0 if action == "move" else 0.0,
            1.0 if action == "loot" else 0.0, n_shots, hit_rate, headshot_rate,
            fast_reactions, mean_reaction, reaction or 0.0, speed or 0.0, max_speed,
            speed_ratio, sum(g[1] for g in loot), len(loot), min(gap_s, 86_400.0)]


# --- iot -------------------------------------------------------------------------------------

def _iot(state: State, t: int, value: float, battery: float | None) -> list[float]:
    last_t, last_value = state.get("last_t"), state.get("last_value")
    gap_s = (t - last_t) / 1000.0 if last_t is not None else 0.0
    typical_gap = state.get("gap")
    gap_ratio = gap_s / typical_gap if typical_gap else 1.0
    fast, slow = state.get("fast"), state.get("slow")
    noise = state.get("noise")
    seen = state.get("n", 0)
    scale = max(noise or 0.0, 1e-9)
    ready = seen >= 5 and noise is not None
    spike_z = abs(value - fast) / scale if ready else 0.0
    drift_z = abs(fast - slow) / scale if ready else 0.0
    run = state.get("run", 0) + 1 if value == last_value else 1

    if last_value is not None and value != last_value:
        # A repeated value says nothing about the noise; counting it would shrink the scale
        # during a stuck episode and make the next honest reading look like a spike.
        diffs = state.get("diffs", 0) + 1
        state["diffs"] = diffs
        # A plain mean until the EWMA has enough samples: an EWMA seeded with its first
        # sample keeps most of that one sample's weight for dozens of readings.
        noise = _ewma(noise, abs(value - last_value), max(1.0 / diffs, 0.05))
    if spike_z < 6.0:  # one wild reading must not drag the baselines
        fast = _ewma(fast, value, 0.3)
        slow = _ewma(slow, value, max(1.0 / (seen + 1), 0.01))
    if last_t is not None and gap_s > 0:
        state["gap"] = _ewma(typical_gap, min(gap_s, 3_600.0), 0.1)
    state.update(last_t=t, last_value=value, fast=fast, slow=slow, noise=noise, run=run,
                 n=seen + 1)
    return [value, spike_z, drift_z, run, min(gap_s, 86_400.0), gap_ratio,
            battery if battery is not None else -1.0, min(seen, 1_000)]


STEPS = {"payments": _payments, "gaming": _gaming, "iot": _iot}


def _none(value: object) -> object:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def fold(domain: str, states: dict[str, State], entity_ids: Sequence[str],
         times_ms: Sequence[int], columns: Iterable[Sequence]) -> np.ndarray:
    """Feature matrix of events in the given order; updates `states` (entity -> dict)."""
    step = STEPS[domain]
    vectors = []
    for entity, t, *values in zip(entity_ids, times_ms, *columns, strict=True):
        state = states.setdefault(entity, {})
        newest = state.get("last_t")
        vectors.append(step(state, int(t) if newest is None else max(int(t), newest),
                            *map(_none, values)))
    return np.array(vectors, dtype=np.float64)
