"""Offset planning of the pa_kafka source: pure functions, no Spark job."""

import pytest

from streaming.kafka_source import (
    KafkaStreamReader,
    OffsetRange,
    ReadTask,
    cap_offsets,
    group_ranges,
)
from streaming.sinks import read_source_status, source_lag


def test_no_cap_needed_returns_the_ends():
    assert cap_offsets({("t", 0): 5}, {("t", 0): 9}, max_rows=100) == {("t", 0): 9}


def test_cap_is_shared_in_proportion_to_backlog():
    start = {("t", 0): 0, ("t", 1): 0}
    end = {("t", 0): 900, ("t", 1): 100}
    capped = cap_offsets(start, end, max_rows=100)
    assert capped == {("t", 0): 90, ("t", 1): 10}


def test_cap_never_starves_a_small_partition():
    start = {("t", 0): 0, ("t", 1): 0}
    end = {("t", 0): 100_000, ("t", 1): 1}
    capped = cap_offsets(start, end, max_rows=10)
    assert capped[("t", 1)] == 1 and capped[("t", 0)] <= 10


def test_partitions_plan_only_ranges_with_data():
    reader = KafkaStreamReader({"kafka.bootstrap.servers": "x:1", "subscribe": "t"})
    ranges = reader.partitions({"t": {"0": 5, "1": 7}}, {"t": {"0": 9, "1": 7}})
    assert ranges == [ReadTask((OffsetRange("x:1", "t", 0, 5, 9),))]


def test_read_tasks_share_the_ranges_by_record_count():
    ranges = [OffsetRange("x:1", "t", p, 0, size) for p, size in enumerate([50, 10, 40, 30, 20])]
    tasks = group_ranges(ranges, 2)
    assert sorted(sum(r.end - r.start for r in task.ranges) for task in tasks) == [70, 80]
    assert sorted(r.partition for task in tasks for r in task.ranges) == [0, 1, 2, 3, 4]


def test_a_recreated_log_is_read_from_its_start():
    # The memory broker restarted: partition 0's end (40) is below where the query was (500).
    reader = KafkaStreamReader({"kafka.bootstrap.servers": "x:1", "subscribe": "t"})
    ranges = reader.partitions({"t": {"0": 500, "1": 7}}, {"t": {"0": 40, "1": 9}})
    assert ranges == [ReadTask((OffsetRange("x:1", "t", 0, 0, 40),)),
                      ReadTask((OffsetRange("x:1", "t", 1, 7, 9),))]


def test_the_cap_counts_a_recreated_log_from_its_start():
    capped = cap_offsets({("t", 0): 500, ("t", 1): 0}, {("t", 0): 40, ("t", 1): 40},
                         max_rows=40)
    assert capped == {("t", 0): 20, ("t", 1): 20}


def test_an_unreachable_broker_plans_no_new_data_and_backs_off(monkeypatch, tmp_path):
    status_file = tmp_path / "status.json"
    reader = KafkaStreamReader({"kafka.bootstrap.servers": "x:1", "subscribe": "t",
                                "maxOffsetsPerTrigger": "10", "statusFile": str(status_file)})
    probes = []

    def broker_down():
        probes.append(1)
        raise ConnectionError("Broker transport failure")

    monkeypatch.setattr(reader, "_end_offsets", broker_down)
    start = {"t": {"0": 5}}
    limit = reader.getDefaultReadLimit()
    assert reader.latestOffset(start, limit) == start
    assert reader.latestOffset(start, limit) == start
    assert len(probes) == 1  # the second trigger waited out the backoff: no probe
    status = read_source_status(status_file)
    assert status["end_offsets"] == "unavailable" and "transport" in status["error"]
    assert source_lag(status) is None

    monkeypatch.setattr(reader, "_end_offsets", lambda: {("t", 0): 40})
    reader._next_probe_at = 0.0  # the backoff is over
    assert reader.latestOffset(start, limit) == {"t": {"0": 15}}
    status = read_source_status(status_file)
    # 35 records were waiting when the batch was planned; it took 10 of them (the cap).
    assert status["end_offsets"] == "ok" and source_lag(status) == {"t-0": 25}


def test_the_lag_of_a_recreated_log_is_all_of_it():
    status = {"end_offsets": "ok", "ends": {"t": {"0": 40, "1": 9}},
              "planned": {"t": {"0": 500, "1": 9}}}
    assert source_lag(status) == {"t-0": 40, "t-1": 0}


@pytest.mark.parametrize(("options", "message"), [
    ({"subscribe": "t"}, "kafka.bootstrap.servers"),
    ({"kafka.bootstrap.servers": "x:1"}, "subscribe"),
    ({"kafka.bootstrap.servers": "x:1", "subscribe": "t", "maxOffsetsPerTrigger": "0"},
     "maxOffsetsPerTrigger"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        KafkaStreamReader(options)
