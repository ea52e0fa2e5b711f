"""The offline detector: the stream's rules, windows and merging over a table of events, and
its scoring against ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import offline
from models.incidents import Incident, incident_key
from models.offline import ALL, Episode, OfflineDetector, generate, replay_incidents, score
from models.promotion import CHALLENGER, CHAMPION, ReplayGate, decide
from models.rules import ABSENCE_AFTER_S

T0 = 1_700_000_000_000  # a multiple of 900 s


def incident(entity: str, detector: str, first_s: float, last_s: float | None = None,
             domain: str = "iot") -> Incident:
    first = T0 + int(first_s * 1000)
    last = T0 + int((first_s if last_s is None else last_s) * 1000)
    return Incident(domain, entity, detector, "rule", first // 900_000 * 900_000, "medium",
                    first, last)


def episode(entity: str, start_s: float, end_s: float, truncated: bool = False) -> Episode:
    return Episode(entity, "spike", T0 + int(start_s * 1000), T0 + int(end_s * 1000), (),
                   truncated)


def test_an_incident_matches_an_episode_of_its_entity_within_the_widened_span():
    episodes = [episode("d1", 1000, 1100), episode("d2", 1000, 1100)]
    found = [incident("d1", "spike", 1100 + 119),    # inside end + AFTER_S: true
             incident("d1", "stuck", 1000 - 59),      # inside start - BEFORE_S: true
             incident("d1", "spike", 1100 + 121),     # just after: false
             incident("d3", "spike", 1050)]           # another entity: false
    quality = score("iot", found, episodes, T0, T0 + 3_600_000)
    assert (quality[ALL].incidents, quality[ALL].true_incidents) == (4, 2)
    assert quality[ALL].precision == 0.5
    assert quality[ALL].recall == 0.5  # d1's episode found, d2's missed
    assert (quality["spike"].incidents, quality["spike"].true_incidents) == (3, 1)
    assert quality["stuck"].precision == 1.0 and quality["stuck"].recall == 0.5


def test_recall_counts_complete_episodes_in_range_only():
    episodes = [episode("d1", 100, 200), episode("d2", 100, 200, truncated=True),
                episode("d3", 5000, 5100)]
    quality = score("iot", [incident("d2", "spike", 150)], episodes, T0, T0 + 3_600_000)
    # d2's truncated episode still makes its incident true, but is not a recall target; d3
    # starts after the range.
    assert quality[ALL].episodes == 1 and quality[ALL].detected == 0
    assert quality[ALL].precision == 1.0


def test_a_silence_is_raised_once_anchored_at_the_last_reading():
    detector = OfflineDetector("iot")
    gap_s = ABSENCE_AFTER_S["iot"] + 30
    times = [T0 + k * 60_000 for k in range(20)]
    times += [times[-1] + int(gap_s * 1000) + k * 60_000 for k in range(5)]
    events = pd.DataFrame({"event_id": [f"e{k}" for k in range(len(times))],
                           "entity_id": "device-1", "event_time": times,
                           "value": 20.0 + np.sin(np.arange(len(times))), "battery_pct": 90.0})
    # Fed in two event-time chunks split inside the gap, as the stream would see it.
    first = detector.detect(events.iloc[:20]).incidents
    second = detector.detect(events.iloc[20:]).incidents
    silences = [i for i in first + second + detector.close() if i.detector == "silence"]
    assert len(silences) == 1
    assert silences[0].key == incident_key("iot", "device-1", "silence",
                                           times[19] // 900_000 * 900_000)


def test_an_entity_that_stops_is_silent_at_close_only_once_the_gap_is_long_enough():
    detector = OfflineDetector("iot")
    events = pd.DataFrame({"event_id": ["a", "b"], "entity_id": ["device-1", "device-2"],
                           "event_time": [T0, T0 + 100_000], "value": [1.0, 1.0],
                           "battery_pct": [90.0, 90.0]})
    detector.detect(events)
    assert detector.close() == []
    late = [i.entity_id for i in detector.close(T0 + 100_000 + 171_000)]
    assert late == ["device-1", "device-2"]
    assert detector.close(T0 + 10**7) == []  # already reported


def test_chunks_give_the_same_incidents_as_one_pass():
    replay = generate("payments", seed=5, minutes=20, entities=200, anomaly_rate=0.01)
    whole = {i.key: i.event_count for i in replay_incidents("payments", replay.events).incidents}
    assert whole
    detector = OfflineDetector("payments")
    events = replay.events.sort_values("event_time")
    cuts = np.linspace(0, len(events), 8).astype(int)
    parts = [detector.detect(events.iloc[a:b]).incidents
             for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    merged = {}
    for part in parts:
        for i in part:
            merged[i.key] = merged.get(i.key, 0) + i.event_count
    assert merged == whole


def test_rules_alone_find_most_generated_episodes_precisely():
    replay = generate("gaming", seed=3, minutes=30, entities=300, anomaly_rate=0.005)
    found = replay_incidents("gaming", replay.events).incidents
    quality = score("gaming", found, replay.episodes, replay.start_ms, replay.end_ms)
    assert quality[ALL].episodes >= 20
    assert quality[ALL].precision >= 0.9
    assert "model" not in quality


def test_incident_curve_counts_windows_and_episodes():
    episodes = [episode("a", 0, 60), episode("b", 0, 60)]
    rows = [("a", 30, 0.95), ("a", 40, 0.5),        # a's episode: best score 0.95
            ("b", 30, 0.7),                          # b's episode: 0.7
            ("c", 30, 0.9), ("c", 1000, 0.8)]        # c: two false windows
    scored = pd.DataFrame([(e, f"{e}{t}", T0 + t * 1000, s) for e, t, s in rows],
                          columns=["entity_id", "event_id", "event_time", "score"])
    curve = offline.incident_curve(scored, episodes, T0, T0 + 3_600_000)

    def at(threshold: float):
        k = int(np.flatnonzero(curve.thresholds < threshold)[0])
        return curve.incidents[k], curve.precision[k], curve.recall[k]

    assert at(0.95) == (1, 1.0, 0.5)          # only a
    assert at(0.9) == (2, 0.5, 0.5)           # a and c's first window
    assert at(0.7) == (4, 0.5, 1.0)           # everything
    choice = offline.choose_incident_threshold(curve, 0.5, z=0.0)
    assert choice.target_met and choice.recall == 1.0 and choice.precision == 0.5
    strict = offline.choose_incident_threshold(curve, 0.99, z=0.0)
    assert strict.precision == 1.0 and strict.recall == 0.5


def test_the_confidence_margin_needs_more_evidence_from_fewer_incidents():
    bound = offline.precision_lower_bound(np.array([9, 90]), np.array([10, 100]), 1.2816)
    assert bound[0] < bound[1] < 0.9
    assert bound[1] == pytest.approx(0.8549, abs=1e-4)  # by hand from Wilson's formula


@pytest.mark.parametrize(("gate", "champion", "alias", "words"), [
    (ReplayGate(0.9, 0.95), None, CHAMPION, "no champion yet; replay incident precision 0.950 "
                                            "(target 0.9)"),
    (ReplayGate(0.9, 0.85), None, CHALLENGER, "below the target"),
    (ReplayGate(0.9, None), None, CHALLENGER, "no incident"),
    (ReplayGate(0.9, 0.93, 0.97), "3", CHALLENGER, "< champion v3"),
    (ReplayGate(0.9, 0.97, 0.93), "3", CHAMPION, "pr_auc 0.8000 > champion v3"),
    (ReplayGate(0.9, 0.97, 0.10), "3", CHAMPION, "champion 0.100"),
])
def test_promotion_needs_replay_precision_at_target_and_not_below_the_champion(
        gate, champion, alias, words):
    decision = decide(0.8, champion, 0.7 if champion else None, replay=gate)
    assert decision.alias == alias and words in decision.reason, decision.reason
