"""Cold start: every entity of a fresh stream has no history, and the rules must not flood.

NORMAL's shape (about one event per entity per minute, the live anomaly rate) over fewer
entities, through the stream's rules offline (models.offline). Only the first five minutes are
scored; the stream runs on for three more, so an episode still under way at five minutes is in
the ground truth (a generator records an episode once it is over).
"""

from __future__ import annotations

import pytest

from models.features import FEATURES, compute
from models.offline import ALL, OfflineDetector, generate, score
from models.rules import RULES, fired

COLD_MINUTES = 5


@pytest.fixture(scope="module", params=sorted(RULES))
def cold(request):
    domain = request.param
    replay = generate(domain, seed=17, minutes=COLD_MINUTES + 3, entities=3000,
                      anomaly_rate=0.001)
    detector = OfflineDetector(domain)
    detection = detector.detect(replay.events)
    return domain, replay, detection


def test_no_flood_of_rule_incidents_in_the_first_minutes(cold):
    domain, replay, detection = cold
    until = replay.start_ms + COLD_MINUTES * 60_000
    quality = score(domain, detection.incidents, replay.episodes, replay.start_ms, until)[ALL]
    assert quality.episodes >= 3, quality
    # 15,000 events of entities with no history: at most one false alarm, or 10 %.
    assert quality.incidents - quality.true_incidents <= max(1, 0.1 * quality.incidents), quality


NEUTRAL = {"payments": {"amount_ratio": 1.0, "amount_z": 0.0, "travel_kmh": 0.0,
                        "history_len": 0.0},
           "gaming": {"speed_ratio": 1.0},
           "iot": {"spike_z": 0.0, "drift_z": 0.0, "gap_ratio": 1.0, "history_len": 0.0}}


def test_an_entity_first_seen_compares_with_nothing(cold):
    """An entity's first event has neutral values where a feature compares it with its own
    past, so rules and the model that need a baseline see nothing unusual in it."""
    domain, replay, detection = cold
    first = replay.events.sort_values("event_time").drop_duplicates("entity_id")
    anomalous = {i for e in replay.episodes for i in e.event_ids}
    first = first[~first["event_id"].isin(anomalous)]
    features = compute(domain, first)
    for name, value in NEUTRAL[domain].items():
        assert (features[name] == value).all(), name
    assert not fired(domain, features[list(FEATURES[domain])].to_numpy())
