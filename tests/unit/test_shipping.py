"""What a job ships to a cluster, and the check that its files are where every node reaches."""

from __future__ import annotations

import zipfile

import pytest

from patternalarm import settings as settings_mod
from patternalarm import shipping


@pytest.fixture
def cfg(clean_settings_env):
    return settings_mod.get()


def test_local_masters_ship_nothing(cfg):
    assert shipping.spark_conf(cfg, "local[2]") == {}
    assert shipping.submit_args(cfg, "local[*]") == []


@pytest.mark.parametrize(("master", "one_machine"), [
    ("local[2]", True),
    ("spark://127.0.0.1:17077", True),
    ("spark://localhost:7077", True),
    ("spark://spark-master:7077", False),
    ("spark://127.0.0.1:7077,spark-master-2:7077", False),
    ("yarn", False),
    ("k8s://https://k8s-api:6443", False),
])
def test_which_masters_run_every_executor_here(cfg, master, one_machine):
    assert shipping.single_machine(master, cfg) is one_machine


def test_a_node_local_directory_stops_a_multi_machine_job(cfg, monkeypatch):
    monkeypatch.setattr(shipping, "filesystem_type", lambda path: "ext4")
    shipping.check_storage(cfg, "spark://127.0.0.1:17077")  # this machine's workers share it
    with pytest.raises(shipping.StorageError, match="PATTERNALARM_SHARED_DIR") as err:
        shipping.check_storage(cfg, "yarn")
    assert str(cfg.checkpoint_dir) in str(err.value) and "ext4" in str(err.value)


def test_a_network_filesystem_passes(cfg, monkeypatch):
    monkeypatch.setattr(shipping, "filesystem_type", lambda path: "nfs4")
    shipping.check_storage(cfg, "k8s://https://k8s-api:6443")


def test_shared_dir_moves_checkpoints_and_lake(clean_settings_env, tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNALARM_SHARED_DIR", str(tmp_path / "shared"))
    cfg = settings_mod.load()
    assert cfg.checkpoint_dir == tmp_path / "shared" / "checkpoints"
    assert cfg.lake_dir == tmp_path / "shared" / "lake"


def test_the_filesystem_of_a_path_not_yet_created_is_its_parents():
    assert shipping.filesystem_type(shipping.PROJECT_ROOT / "var" / "no" / "such" / "dir")


def test_the_code_zip_holds_the_packages_and_no_bytecode(cfg):
    with zipfile.ZipFile(shipping.build_code(cfg)) as zf:
        names = zf.namelist()
    for module in ("patternalarm/settings.py", "streaming/job.py", "spark_jobs/train_model.py",
                   "models/spark.py", "models/expectations/training.json"):
        assert module in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("api/")]


def test_cluster_submits_ship_code_and_environment(cfg, monkeypatch, tmp_path):
    env = tmp_path / "executor-env-x.tar.gz"
    monkeypatch.setattr(shipping, "build_env", lambda cfg: env)
    conf = shipping.spark_conf(cfg, "spark://127.0.0.1:17077")
    assert conf["spark.archives"] == f"{env}#environment"
    assert conf["spark.pyspark.python"] == "./environment/bin/python"
    assert conf["spark.submit.pyFiles"].endswith("patternalarm-code.zip")
