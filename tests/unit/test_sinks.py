from models.incidents import Incident, incident_key, merge_same_key


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
    [merged] = merge_same_key([a, b])
    assert merged.event_count == 5
    assert merged.severity == "high" and merged.score == 0.9
    assert (merged.first_event_ms, merged.last_event_ms) == (1_699_999_999_000, 1_700_000_005_000)
    assert merged.evidence == {"a": 1, "b": 2}


def test_different_windows_stay_apart():
    assert len(merge_same_key([make(), make(window_start_ms=1_700_000_060_000)])) == 2


def test_cap_shrinks_slow_batches_and_grows_while_behind():
    from streaming.sinks import next_cap

    bounds = dict(target_s=1.0, floor=1_000, ceiling=200_000)
    # 0.2 s fixed, 50,000 rows in 2.2 s: 25,000 rows/s beyond the fixed part, so the 0.8 s
    # left of the target buys 20,000 rows.
    assert next_cap(50_000, 50_000, 2.2, lag=90_000, fixed_s=0.2, **bounds) == 20_000
    # Fast batch with a backlog: double; caught up: keep.
    assert next_cap(20_000, 20_000, 0.4, lag=5_000, fixed_s=0.2, **bounds) == 40_000
    assert next_cap(20_000, 300, 0.4, lag=0, fixed_s=0.2, **bounds) == 20_000
    # The fixed cost alone exceeds the target: only bigger batches help while behind.
    assert next_cap(4_000, 4_000, 4.5, lag=50_000, fixed_s=4.0, **bounds) == 8_000
    # The fixed cost close to the target: batches up to twice the fixed cost, not the floor.
    assert next_cap(2_600, 2_600, 1.5, lag=5_000, fixed_s=0.9, **bounds) == 5_200
    assert next_cap(10_000, 10_000, 3.6, lag=5_000, fixed_s=0.9, **bounds) == 3_333
    # Never below the floor nor above the ceiling.
    assert next_cap(1_000, 10, 5.0, lag=0, fixed_s=0.1, **bounds) == 1_000
    assert next_cap(150_000, 150_000, 0.5, lag=10**6, fixed_s=0.1, **bounds) == 200_000
