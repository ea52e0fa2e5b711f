"""Declarative pattern rules per domain, evaluated on the shared per-entity features.

A rule fires on an event when all its conditions hold on that event's features (which carry
the entity's history: counts in windows, runs, gaps, time since an earlier kind of event), so
threshold, count-in-window, run-length, sequence (A then B within T) and absence rules are all
one shape. Absence is also checked without a closing event: the streaming job's state raises
`silence` when the watermark passes an entity's last event by `ABSENCE_AFTER_S`.

The stream (streaming/detector.py) and the offline detector (models/offline.py) both take their
hits and incident windows from here.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.features import FEATURES
from models.incidents import window_start_ms

Kind = Literal["threshold", "count_in_window", "sequence", "absence", "run_length"]
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
        "==": operator.eq}


@dataclass(frozen=True)
class Rule:
    detector: str
    kind: Kind
    when: tuple[tuple[str, str, float], ...]  # (feature, op, value): all must hold
    severity: str
    doc: str
    # Triggers of one entity inside one window merge into one incident.
    window_s: int = 900


RULES: dict[str, tuple[Rule, ...]] = {
    "payments": (
        Rule("velocity_burst", "count_in_window", (("count_1m", ">=", 9),), "high",
             "9+ transactions within a minute; a card makes about one a minute"),
        Rule("card_testing", "count_in_window",
             (("small_charges_5m", ">=", 4), ("is_small_charge", ">=", 1)), "high",
             "4+ charges under 3 units (and under 30% of the card's typical amount) within "
             "5 minutes: probing whether a stolen card works"),
        Rule("impossible_travel", "threshold", (("travel_kmh", ">=", 5_000),), "critical",
             "card used at places farther apart than any flight could cover in between"),
        Rule("amount_spike", "threshold",
             (("amount_ratio", ">=", 10), ("amount_z", ">=", 4), ("history_len", ">=", 3)),
             "medium", "a charge 10x the card's typical amount and far outside its spread"),
        Rule("test_then_spend", "sequence",
             (("secs_since_small_charge", "<=", 1_800), ("amount_ratio", ">=", 8),
              ("amount_z", ">=", 3), ("history_len", ">=", 3)), "critical",
             "a tiny test charge followed within 30 minutes by a large one"),
    ),
    "gaming": (
        Rule("aimbot", "threshold",
             (("is_shot", ">=", 1), ("shots_window", ">=", 10), ("hit_rate", ">=", 0.85),
              ("headshot_rate", ">=", 0.5)), "high",
             "85%+ hits and 50%+ headshots over 10+ shots within two minutes"),
        Rule("inhuman_reaction", "count_in_window",
             (("reaction_ms", "<", 100), ("fast_reactions_10", ">=", 3)), "high",
             "a shot under 100 ms after the target appeared, the 3rd of the last 10"),
        Rule("speed_hack", "threshold", (("speed", ">=", 14.25),), "high",
             "moving at 1.5x the fastest legal sprint (9.5 m/s)"),
        Rule("resource_farming", "count_in_window", (("loot_gain_1m", ">=", 1_500),), "medium",
             "1,500+ resources looted within a minute"),
    ),
    "iot": (
        Rule("spike", "threshold", (("spike_z", ">=", 7), ("history_len", ">=", 10)), "medium",
             "a reading 7+ typical reading-to-reading changes from the device's recent level"),
        Rule("stuck", "run_length", (("repeat_run", ">=", 8),), "medium",
             "8+ identical readings in a row: a frozen sensor"),
        Rule("drift", "threshold", (("drift_z", ">=", 6), ("history_len", ">=", 20)), "low",
             "the short-term level moved 6+ noise widths from the long-term one"),
        Rule("silence", "absence",
             (("secs_since_last", ">=", 170), ("gap_ratio", ">=", 2.5)), "medium",
             "a device that reports every minute or so went quiet for ~3 minutes"),
    ),
}

ABSENCE_AFTER_S = {"iot": 170.0}


def fired(domain: str, features: np.ndarray) -> list[tuple[int, Rule]]:
    """(row, rule) for every rule that holds on a row of a domain's feature matrix."""
    columns = {name: i for i, name in enumerate(FEATURES[domain])}
    hits = []
    for rule in RULES[domain]:
        mask = np.ones(len(features), dtype=bool)
        for feature, op, value in rule.when:
            mask &= _OPS[op](features[:, columns[feature]], value)
        hits.extend((int(row), rule) for row in np.flatnonzero(mask))
    return hits


def window_start(rule: Rule, event_time: int, quiet_since: int | None = None) -> int:
    """Start of the incident window; an absence is anchored where the silence began, so the
    timer's incident and the one raised by the late reading share a key."""
    return window_start_ms(quiet_since if quiet_since is not None else event_time,
                           rule.window_s)


def hits(domain: str, times_ms, features: np.ndarray
         ) -> list[tuple[int, Rule, int, dict[str, float]]]:
    """(row, rule, window start, the rule's feature values) for every rule that holds."""
    names = FEATURES[domain]
    out = []
    for row, rule in fired(domain, features):
        values = features[row]
        t = int(times_ms[row])
        quiet_since = (int(t - values[names.index("secs_since_last")] * 1000)
                       if rule.kind == "absence" else None)
        out.append((row, rule, window_start(rule, t, quiet_since),
                    {f: float(values[names.index(f)]) for f, _, _ in rule.when}))
    return out


def absence_rule(domain: str) -> Rule:
    return next(r for r in RULES[domain] if r.kind == "absence")
