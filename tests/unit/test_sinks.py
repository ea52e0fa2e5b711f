from streaming.sinks import Incident, _merge_same_key, incident_key


def make(**kw):
    base = dict(domain="payments", entity_id="card-1", detector="velocity_burst",
                detector_kind="rule", window_start_ms=1_700_000_000_000, severity="medium",
                first_event_ms=1_700_000_000_000, last_event_ms=1_700_000_001_000,
                event_count=3)
    return Incident(**{**base, **kw})


def test_key_is_deterministic_and_separates_each_part():
    key = incident_key("payments", "card-1", "velocity_burst", 60_000)
    assert key == incident_key("payments", "card-1", "velocity_burst", 60_000)
    assert key.startswith("payments:velocity_burst:")
    others = {incident_key("payments", "card-2", "velocity_burst", 60_000),
              incident_key("payments", "card-1", "card_testing", 60_000),
              incident_key("payments", "card-1", "velocity_burst", 120_000),
              incident_key("gaming", "card-1", "velocity_burst", 60_000),
              # no ambiguity from concatenation
              incident_key("payments", "card-1v", "elocity_burst", 60_000)}
    assert key not in others and len(others) == 5


def test_same_key_in_one_batch_merges_counts_times_and_worst_severity():
    a = make(severity="medium", score=0.7, evidence={"a": 1})
    b = make(severity="high", score=0.9, first_event_ms=1_699_999_999_000,
             last_event_ms=1_700_000_005_000, event_count=2, evidence={"b": 2})
    [merged] = _merge_same_key([a, b])
    assert merged.event_count == 5
    assert merged.severity == "high" and merged.score == 0.9
    assert (merged.first_event_ms, merged.last_event_ms) == (1_699_999_999_000, 1_700_000_005_000)
    assert merged.evidence == {"a": 1, "b": 2}


def test_different_windows_stay_apart():
    assert len(_merge_same_key([make(), make(window_start_ms=1_700_000_060_000)])) == 2


def test_cap_follows_measured_throughput_within_bounds():
    from streaming.sinks import next_cap

    # 50,000 rows in 2.5 s: 20,000/s, so a 1 s target allows 20,000 next time.
    assert next_cap(50_000, 2.5, target_s=1.0, floor=1_000, ceiling=200_000) == 20_000
    assert next_cap(10, 5.0, target_s=1.0, floor=1_000, ceiling=200_000) == 1_000
    assert next_cap(10**7, 1.0, target_s=1.0, floor=1_000, ceiling=200_000) == 200_000
    assert next_cap(0, 0.0, target_s=1.0, floor=1_000, ceiling=200_000) == 200_000
