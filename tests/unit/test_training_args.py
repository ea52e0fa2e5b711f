"""The training job's arguments and file checks: bad input exits 2 before any Spark work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from patternalarm import settings as settings_mod
from spark_jobs import train_model as job


@pytest.fixture
def no_java(monkeypatch, tmp_path):
    """Point Java at nothing: a job that reached Spark would raise instead of exiting 2."""
    monkeypatch.setenv(settings_mod.env_key("java_home"), str(tmp_path / "no-java"))
    settings_mod.get.cache_clear()
    yield
    settings_mod.get.cache_clear()


def labelled(n: int = 50, **extra) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"amount": rng.normal(size=n), "count": rng.integers(0, 9, n),
                          "country": ["fr"] * n, "is_fraud": np.arange(n) % 2,
                          "event_time": 1_700_000_000_000 + np.arange(n)})
    return frame.assign(**extra)


def run(capsys, *argv: str) -> tuple[int, str]:
    code = job.main(list(argv))
    return code, capsys.readouterr().err


def test_missing_label_column(no_java, tmp_path, capsys):
    labelled().to_csv(tmp_path / "d.csv", index=False)
    code, err = run(capsys, "--input", str(tmp_path / "d.csv"), "--label", "nope",
                    "--model-name", "m")
    assert code == 2 and "label column 'nope' not in" in err


def test_single_class(no_java, tmp_path, capsys):
    labelled(is_fraud=1).to_parquet(tmp_path / "d.parquet")
    code, err = run(capsys, "--input", str(tmp_path / "d.parquet"), "--label", "is_fraud",
                    "--model-name", "m")
    assert code == 2 and "single class" in err


def test_label_not_binary(no_java, tmp_path, capsys):
    labelled(is_fraud=np.arange(50) % 3).to_csv(tmp_path / "d.csv", index=False)
    code, err = run(capsys, "--input", str(tmp_path / "d.csv"), "--label", "is_fraud",
                    "--model-name", "m")
    assert code == 2 and "must be 0/1 or boolean" in err


def test_non_numeric_feature(no_java, tmp_path, capsys):
    labelled().to_csv(tmp_path / "d.csv", index=False)
    code, err = run(capsys, "--input", str(tmp_path / "d.csv"), "--label", "is_fraud",
                    "--features", "amount,country", "--model-name", "m")
    assert code == 2 and "must be numeric" in err and "country" in err


@pytest.mark.parametrize("content", [b"", b"amount,is_fraud\n"], ids=["no-bytes", "header-only"])
def test_empty_input(no_java, tmp_path, capsys, content):
    (tmp_path / "d.csv").write_bytes(content)
    code, err = run(capsys, "--input", str(tmp_path / "d.csv"), "--label", "is_fraud",
                    "--model-name", "m")
    assert code == 2 and str(tmp_path / "d.csv") in err


def test_unreadable_file(no_java, tmp_path, capsys):
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    code, err = run(capsys, "--input", str(tmp_path / "d.parquet"), "--label", "is_fraud",
                    "--model-name", "m")
    assert code == 2 and "cannot read as parquet" in err


def test_missing_file(no_java, tmp_path, capsys):
    code, err = run(capsys, "--input", str(tmp_path / "nothing.csv"), "--label", "y",
                    "--model-name", "m")
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--input", "x.csv", "--label", "y"], "--model-name"),
    (["--label", "y", "--model-name", "m"], "needs --input and --label"),
    (["--source", "lake", "--model-name", "m"], "needs --domain"),
    (["--source", "bootstrap", "--domain", "iot,mars"], "unknown domain ['mars']"),
    (["--input", "x", "--label", "y", "--domain", "iot,gaming"], "several domains"),
    (["--source", "lake", "--domain", "iot,gaming", "--model-name", "m"], "several domains"),
    (["--input", "x", "--label", "y", "--model-name", "m", "--holdout-fraction", "1"],
     "--holdout-fraction"),
])
def test_argument_combinations(no_java, capsys, argv, message):
    code, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_default_features_and_time(tmp_path):
    labelled().to_csv(tmp_path / "d.csv", index=False)
    spec = job.inspect_file(str(tmp_path / "d.csv"), "is_fraud", None, None)
    # Numeric columns only, label and (detected) event_time left out.
    assert spec.features == ["amount", "count"]
    assert spec.time_col == "event_time" and not spec.time_is_timestamp
    assert dict(spec.csv_schema)["country"] == "string"


def test_timestamp_time_column_and_boolean_label(tmp_path):
    frame = labelled(ts=pd.date_range("2024-01-01", periods=50, freq="s"),
                     is_fraud=np.arange(50) % 2 == 0).drop(columns="event_time")
    frame.to_parquet(tmp_path / "d.parquet")
    spec = job.inspect_file(str(tmp_path / "d.parquet"), "is_fraud", "ts", None)
    assert spec.time_is_timestamp and spec.features == ["amount", "count"]


def test_reserved_feature_names(tmp_path):
    labelled(weight=1.0).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(job.InputError, match="reserved"):
        job.inspect_file(str(tmp_path / "d.csv"), "is_fraud", None, None)


def test_domain_names_the_model():
    args = job.parse_args(["--input", "x", "--label", "y", "--domain", "iot",
                           "--features", "a, b"])
    assert args.model_name == "patternalarm-iot" and args.features == ["a", "b"]


def test_several_domains_train_one_model_each():
    args = job.parse_args(["--source", "bootstrap", "--domain", "payments, iot", "--promote"])
    runs = job._runs(args)
    assert [(r.domain, r.model_name, r.promote) for r in runs] == [
        ("payments", "patternalarm-payments", True), ("iot", "patternalarm-iot", True)]


def test_csv_types_come_from_the_whole_file(tmp_path):
    """R's write.csv writes 100000 as 1e+05: far down an integer column, it must widen the
    column to double, not become a null (the gate would refuse the file); text far down a
    number column makes it text, not a feature with nulls."""
    path = tmp_path / "r.csv"
    rows = [f"{i},{i % 7},{i % 5},{i % 2}" for i in range(200_000)]
    rows[150_000] = "150000,1e+05,0,0"
    rows[180_000] = "180000,3,x7,1"
    path.write_text("t,amount,code,is_fraud\n" + "\n".join(rows) + "\n")
    spec = job.inspect_file(str(path), "is_fraud", "t", None)
    schema = dict(spec.csv_schema)
    assert (schema["amount"], schema["code"], schema["t"]) == ("double", "string", "bigint")
    assert spec.features == ["amount"]
