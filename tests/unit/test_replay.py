"""A labelled file becomes validated events in time order, with its labels as episodes."""

import json

import pandas as pd
import pytest

from patternalarm import cli
from patternalarm.domains import payments
from patternalarm.replay import ReplayError, ReplayOptions, ReplaySource

START_MS = 1_700_000_000_000


def table(tmp_path, suffix=".csv"):
    frame = pd.DataFrame({
        "Time": [10.0, 0.0, 4.0, 4.0],
        "card": [7, 7, 9, 11],
        "Amount": [12.5, 3.0, 99.0, 1.0],
        "V1": [0.5, -1.5, 2.0, None],
        "note": ["a", "b", "c", "d"],
        "Class": [0, 1, 0, 1],
    })
    path = tmp_path / f"table{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_rows_become_events_in_time_order_with_labels_as_episodes(tmp_path, suffix):
    source = ReplaySource(ReplayOptions(table(tmp_path, suffix), "payments", "card", "Time",
                                        "Class", speedup=2.0), "rtest", START_MS)
    assert source.timeline.offsets == [0.0, 2.0, 2.0, 5.0]
    assert source.ignored == ["note"] and source.positives == 2
    sent = [next(source) for _ in range(4)]
    events = [payments.CONTRACT.parse(value) for _, value, _, _ in sent]
    assert [e["entity_id"] for e in events] == ["7", "9", "11", "7"]
    assert [k for k, _, _, _ in sent] == [b"7", b"9", b"11", b"7"]
    # Sent at half the spacing; event times keep the file's.
    assert [e["event_time"] - START_MS for e in events] == [0, 4000, 4000, 10000]
    assert events[0]["payload"] == {"amount": 3.0, "attributes": {"V1": -1.5}}
    assert events[2]["payload"] == {"amount": 1.0}          # an empty cell is left out
    assert all("Class" not in json.dumps(e) for e in events)
    episodes = [ep for _, _, ep, _ in sent if ep is not None]
    assert [(ep.entity_id, ep.kind, ep.events) for ep in episodes] == [
        ("7", "Class=1", [(events[0]["event_id"], events[0]["event_time"])]),
        ("11", "Class=1", [(events[2]["event_id"], events[2]["event_time"])])]


def test_a_row_that_breaks_the_contract_stops_the_replay_naming_it(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("card,t,amount\nc1,0,5\nc2,1,-3\n")
    with pytest.raises(ReplayError, match=r"row 2, column 'amount': -3\.0 below"):
        ReplaySource(ReplayOptions(path, "payments", "card", "t"), "rtest", START_MS)


def test_timestamps_in_text_are_parsed(tmp_path):
    path = tmp_path / "iso.csv"
    path.write_text("device,at,sensor_type,value\n"
                    "d1,2024-05-01T10:00:30Z,temperature,20.5\n"
                    "d1,2024-05-01T10:00:00Z,temperature,20.0\n")
    source = ReplaySource(ReplayOptions(path, "iot", "device", "at"), "rtest", START_MS)
    assert source.timeline.offsets == [0.0, 30.0]
    with pytest.raises(ReplayError, match="row 1, column 'at': empty time"):
        path.write_text("device,at,sensor_type,value\nd1,,temperature,1\n")
        ReplaySource(ReplayOptions(path, "iot", "device", "at"), "rtest", START_MS)


@pytest.mark.parametrize(("row", "column", "second_row", "named"), [
    (2, "amount", "c2,1,lots,0.25", "'lots' is not a double"),
    (2, "amount", "c2,1,inf,0.25", "not a finite number"),
    (2, "amount", "c2,1,1e400,0.25", "not a finite number"),
    (2, "amount", "c2,1,-3,0.25", "-3.0 below 0"),
    (2, "V1", "c2,1,7,-inf", "not a finite number"),
    (2, "card", ",1,7,0.25", "empty entity"),
    (2, "t", "c2,,7,0.25", "empty time"),
    (2, "t", "c2,inf,7,0.25", "inf is neither seconds nor a timestamp"),
    (2, "t", "c2,soon,7,0.25", "'soon' is neither seconds nor a timestamp"),
    (3, "t", "c2,1,7,0.25\nc3,1e300,7,0.25", "number out of long range"),
    (3, "t", "c2,1,7,0.25\nc3,3e9,7,0.25", "above"),  # past the contract's event-time range
])
@pytest.mark.usefixtures("clean_settings_env")
def test_a_bad_cell_exits_2_naming_row_and_column(tmp_path, capsys, row, column, second_row,
                                                  named):
    path = tmp_path / "bad.csv"
    path.write_text(f"card,t,amount,V1\nc1,0,5,0.5\n{second_row}\n")
    code = cli.main(["generate", "--from-file", str(path), "--domain", "payments",
                     "--entity-col", "card", "--time-col", "t", "--no-db"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"bad.csv: row {row}, column '{column}': " in err and named in err, err
    assert "Traceback" not in err


@pytest.mark.usefixtures("clean_settings_env")
def test_cli_usage_errors_exit_2_with_the_usage(capsys):
    code = cli.main(["generate", "--from-file", "x.csv", "--domain", "payments"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("usage: patternalarm generate ") and "--from-file needs" in err


def test_a_long_series_replayed_fast_is_detected_as_when_replayed_slowly(tmp_path):
    """Two days of minute readings from five sensors with injected faults: sped up 10,000
    times, the replay's event times, and so the features, rules and incidents, are those of
    the replay in real time."""
    from models.offline import OfflineDetector, generate
    from patternalarm.domains import iot

    series = generate("iot", seed=8, minutes=2 * 24 * 60, entities=5, anomaly_rate=0.004)
    faulty = {i for e in series.episodes for i in e.event_ids}
    frame = series.events.assign(t=series.events["event_time"] / 1000.0,
                                 fault=series.events["event_id"].isin(faulty).astype(int))
    path = tmp_path / "sensors.csv"
    frame.drop(columns=["event_id", "event_time", "domain", "schema_version"],
               errors="ignore").to_csv(path, index=False)

    def incidents(speedup: float) -> set[str]:
        source = ReplaySource(ReplayOptions(path, "iot", "entity_id", "t", "fault",
                                            speedup=speedup), "rtest", START_MS)
        events = [iot.CONTRACT.parse(value) for _, value, _, _, _ in source.messages]
        table = pd.DataFrame([{**e.pop("payload"), **e} for e in events])
        detector = OfflineDetector("iot")
        found = detector.detect(table).incidents + detector.close()
        return {i.key for i in found}

    slow, fast = incidents(1.0), incidents(10_000.0)
    assert len(slow) >= 20  # the faults are found: a real comparison
    assert fast == slow
