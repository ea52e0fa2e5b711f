import numpy as np
import pytest

from models.features import FEATURES
from models.rules import ABSENCE_AFTER_S, RULES, fired


def row(domain, **values):
    vector = np.zeros((1, len(FEATURES[domain])))
    for name, value in values.items():
        vector[0, FEATURES[domain].index(name)] = value
    return vector


def test_rules_name_only_existing_features_and_known_severities():
    for domain, rules in RULES.items():
        for rule in rules:
            assert rule.severity in ("low", "medium", "high", "critical")
            for feature, op, _ in rule.when:
                assert feature in FEATURES[domain], (rule.detector, feature)
                assert op in (">=", ">", "<=", "<", "==")


def test_every_domain_has_the_rule_kinds_the_design_names():
    kinds = {r.kind for rules in RULES.values() for r in rules}
    assert kinds == {"threshold", "count_in_window", "sequence", "absence", "run_length"}
    assert set(ABSENCE_AFTER_S) <= set(RULES)


@pytest.mark.parametrize(("domain", "values", "detector"), [
    ("payments", dict(count_1m=9), "velocity_burst"),
    ("payments", dict(small_charges_5m=4, is_small_charge=1), "card_testing"),
    ("payments", dict(travel_kmh=12_000), "impossible_travel"),
    ("payments", dict(amount_ratio=20, amount_z=6, history_len=10,
                      secs_since_small_charge=86_400), "amount_spike"),
    ("gaming", dict(is_shot=1, shots_window=12, hit_rate=0.95, headshot_rate=0.7,
                    reaction_ms=300), "aimbot"),
    ("gaming", dict(reaction_ms=40, fast_reactions_10=3), "inhuman_reaction"),
    ("gaming", dict(speed=30, reaction_ms=300), "speed_hack"),
    ("gaming", dict(loot_gain_1m=2_000, reaction_ms=300), "resource_farming"),
    ("iot", dict(spike_z=9, history_len=50), "spike"),
    ("iot", dict(repeat_run=12), "stuck"),
    ("iot", dict(drift_z=8, history_len=50), "drift"),
    ("iot", dict(secs_since_last=400, gap_ratio=6), "silence"),
])
def test_rule_fires_on_its_pattern_only(domain, values, detector):
    assert [r.detector for _, r in fired(domain, row(domain, **values))] == [detector]


def test_ordinary_events_fire_nothing():
    assert fired("payments", row("payments", count_1m=1, amount_ratio=1.1, history_len=20,
                                 secs_since_small_charge=86_400)) == []
    assert fired("gaming", row("gaming", is_shot=1, shots_window=5, hit_rate=0.4,
                               reaction_ms=320, speed=6)) == []
    assert fired("iot", row("iot", spike_z=1.2, drift_z=0.5, repeat_run=1, history_len=50,
                            secs_since_last=60, gap_ratio=1.0)) == []


def test_sequence_needs_both_steps():
    spend = dict(amount_ratio=12, amount_z=5, history_len=10)
    assert "test_then_spend" in [r.detector for _, r in fired(
        "payments", row("payments", secs_since_small_charge=600, **spend))]
    assert "test_then_spend" not in [r.detector for _, r in fired(
        "payments", row("payments", secs_since_small_charge=86_400, **spend))]
