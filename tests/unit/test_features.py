"""Feature engines on hand-made histories with known answers."""

import pandas as pd
import pytest

from models.features import ENGINES, FEATURES, compute, fold, new_state

T0 = 1_700_000_000_000


def payments(rows):
    return pd.DataFrame([dict(event_id=f"e{i}", entity_id=e, event_time=t, amount=a,
                              country=c, merchant_id=m, lat=la, lon=lo, channel=ch)
                         for i, (e, t, a, c, m, la, lo, ch) in enumerate(rows)])


def test_every_engine_emits_its_declared_features():
    for domain, engine in ENGINES.items():
        assert len(set(engine.names)) == len(engine.names) == len(FEATURES[domain])


def test_payments_velocity_small_charges_and_travel():
    rows = [("c1", T0 + i * 10_000, 1.5, "US", f"m{i}", 40.7, -74.0, "ecom") for i in range(5)]
    rows.append(("c1", T0 + 5 * 60_000, 50.0, "JP", "m9", 35.7, 139.7, "pos"))
    f = compute("payments", payments(rows)).set_index("event_id")
    assert f.loc["e4", "count_1m"] == 5            # e0..e4 all within 40 s
    assert f.loc["e4", "small_charges_5m"] == 5
    assert f.loc["e4", "merchants_10m"] == 5
    assert f.loc["e4", "secs_since_last"] == 10.0
    assert f.loc["e0", "history_len"] == 0 and f.loc["e4", "history_len"] == 4
    # New York to Tokyo (~10,850 km) in 260 s is far faster than any flight.
    assert f.loc["e5", "travel_kmh"] > 100_000
    assert f.loc["e5", "countries_1h"] == 2
    assert f.loc["e5", "secs_since_small_charge"] == 260.0


def test_payments_amount_against_the_cards_own_history():
    rows = [("c1", T0 + i * 60_000, 20.0 + i % 3, "US", "m1", None, None, "pos")
            for i in range(10)]
    rows.append(("c1", T0 + 11 * 60_000, 900.0, "US", "m1", None, None, "pos"))
    f = compute("payments", payments(rows)).set_index("event_id")
    assert f.loc["e10", "amount_ratio"] > 30
    assert f.loc["e10", "amount_z"] > 10
    assert abs(f.loc["e9", "amount_z"]) < 3
    assert f.loc["e10", "travel_kmh"] == 0.0      # no coordinates, no travel


def test_entities_do_not_share_history():
    rows = [("c1", T0, 5.0, "US", "m", None, None, "pos"),
            ("c2", T0 + 1_000, 5.0, "US", "m", None, None, "pos")]
    f = compute("payments", payments(rows)).set_index("event_id")
    assert f.loc["e1", "count_1m"] == 1 and f.loc["e1", "history_len"] == 0


def test_streaming_in_pieces_equals_one_pass():
    """The stream folds micro-batches into kept states; training folds history at once."""
    rows = [(f"c{i % 3}", T0 + i * 7_000, 1.0 + (i * 37) % 200, "US", f"m{i % 4}",
             40.0 + i * 0.01, -70.0, "pos" if i % 2 else "ecom") for i in range(60)]
    events = payments(rows)
    whole = compute("payments", events)
    state = new_state("payments")
    parts = [compute("payments", events.iloc[a:b], state) for a, b in ((0, 17), (17, 40),
                                                                         (40, 60))]
    pd.testing.assert_frame_equal(pd.concat(parts), whole)


def test_gaming_accuracy_reaction_speed_and_loot():
    rows = []
    for i in range(10):
        rows.append(dict(action="shoot", hit=True, headshot=i % 2 == 0, reaction_ms=60.0,
                         speed=None, resource_gain=None))
    rows += [dict(action="move", speed=6.0, hit=None, headshot=None, reaction_ms=300.0,
                  resource_gain=None)] * 3
    rows.append(dict(action="move", speed=30.0, hit=None, headshot=None, reaction_ms=300.0,
                     resource_gain=None))
    rows.append(dict(action="loot", resource_gain=400, speed=None, hit=None, headshot=None,
                     reaction_ms=200.0))
    frame = pd.DataFrame([{**r, "event_id": f"e{i}", "entity_id": "p1",
                           "event_time": T0 + i * 1_000} for i, r in enumerate(rows)])
    f = compute("gaming", frame).set_index("event_id")
    assert f.loc["e9", "hit_rate"] == 1.0
    assert f.loc["e9", "headshot_rate"] == 0.5
    assert f.loc["e9", "fast_reactions_10"] == 10
    assert f.loc["e13", "max_speed_1m"] == 30.0
    assert f.loc["e13", "speed_ratio"] == pytest.approx(5.0)
    assert f.loc["e14", "loot_gain_1m"] == 400


def iot(values, gaps_s=None):
    times, t = [], T0
    for i in range(len(values)):
        t += int((gaps_s[i] if gaps_s else 60) * 1000)
        times.append(t)
    return pd.DataFrame(dict(event_id=[f"e{i}" for i in range(len(values))],
                             entity_id="d1", event_time=times, value=values,
                             battery_pct=80.0))


def test_iot_spike_stuck_and_silence():
    noisy = [20.0 + (0.5 if i % 2 else -0.5) for i in range(30)]
    f = compute("iot", iot(noisy + [35.0])).set_index("event_id")
    assert f.loc["e29", "spike_z"] < 3
    assert f.loc["e30", "spike_z"] > 10

    f = compute("iot", iot(noisy + [21.0] * 12)).set_index("event_id")
    assert f.loc["e41", "repeat_run"] == 12
    assert f.loc["e29", "repeat_run"] == 1

    gaps = [60] * 30 + [400]
    f = compute("iot", iot(noisy + [20.0], gaps)).set_index("event_id")
    assert f.loc["e30", "secs_since_last"] == 400
    assert f.loc["e30", "gap_ratio"] == pytest.approx(400 / 60, rel=0.01)


def test_iot_drift_grows_as_the_level_walks_away():
    walk = [20.0 + (0.5 if i % 2 else -0.5) + (0.4 * (i - 40) if i > 40 else 0)
            for i in range(100)]
    f = compute("iot", iot(walk)).set_index("event_id")
    assert f.loc["e40", "drift_z"] < 2
    assert f.loc["e99", "drift_z"] > 10


def test_fold_rejects_misaligned_columns():
    with pytest.raises(ValueError):
        fold("iot", new_state("iot"), ["d1", "d1"], [T0, T0 + 1], [[1.0], [None, None]])


def test_windows_hold_at_most_their_cap():
    shots = pd.DataFrame([dict(event_id=f"e{i}", entity_id="p1", event_time=T0 + i * 1_000,
                               action="shoot", hit=True, headshot=False, reaction_ms=250.0,
                               speed=None, resource_gain=None) for i in range(40)])
    assert compute("gaming", shots)["shots_window"].max() == 20
