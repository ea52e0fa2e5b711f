"""`patternalarm generate` argument checks (exit 2) and the unreachable broker (exit 1)."""

import json
import socket

import pytest

from patternalarm import cli

pytestmark = pytest.mark.usefixtures("clean_settings_env")


@pytest.mark.parametrize(("argv", "named"), [
    (["--domain", "payments,crypto"], "--domain: unknown domain crypto"),
    (["--domain", "iot,iot"], "--domain: a domain is listed twice"),
    (["--mode", "TURBO"], "--mode: unknown mode 'TURBO'"),
    (["--mode", "CUSTOM"], "--mode CUSTOM needs --rate"),
    (["--rate", "-5"], "--rate: invalid value -5.0"),
    (["--mode", "PEAK", "--rate", "10"], "--rate goes with --mode CUSTOM"),
    (["--duration", "0"], "--duration: invalid value 0.0"),
    (["--count", "-1"], "--count: invalid value -1"),
    (["--late-fraction", "0.9"], "--late-fraction: invalid value 0.9"),
    (["--spike", "burst:5"], "--spike: spike profile 'burst:5'"),
    (["--from-file", "x.csv", "--domain", "payments,iot"], "exactly one --domain"),
    (["--from-file", "x.csv", "--time-col", "t"], "--from-file needs --entity-col"),
    (["--entity-col", "card"], "--entity-col/--time-col/--label-col go with --from-file"),
    (["--from-file", "nowhere.csv", "--entity-col", "c", "--time-col", "t"],
     "cannot read nowhere.csv"),
    (["--from-file", "table.csv", "--entity-col", "card", "--time-col", "when"],
     "no column 'when' (columns: card, time, amount)"),
    (["--from-file", "table.csv", "--entity-col", "card", "--time-col", "time",
      "--domain", "iot"], "the iot contract needs column(s) sensor_type, value"),
    (["--from-file", "table.txt", "--entity-col", "card", "--time-col", "time"],
     "expected a .csv or .parquet file"),
])
def test_bad_input_is_a_usage_error_naming_it(argv, named, tmp_path, capsys):
    (tmp_path / "table.csv").write_text("card,time,amount\nc1,0,12.5\n")
    (tmp_path / "table.txt").write_text("card,time\n")
    assert cli.main(["generate", *argv]) == 2
    assert named in capsys.readouterr().err


def test_unreachable_broker_exits_non_zero_counting_undelivered(monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("PATTERNALARM_KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    code = cli.main(["generate", "--domain", "payments,iot", "--count", "25", "--no-db",
                     "--connect-attempts", "2", "--json"])
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert code == 1
    assert summary["sent"] == 0 and summary["undelivered"] == 50
    assert "unreachable after 2 attempts" in summary["per_domain"]["iot"]["failure"]
    assert "50 of 50 events undelivered" in out.err
