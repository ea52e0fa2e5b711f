"""What a Spark job takes with it to a cluster, and where its files must be for every node.

On a master other than ``local[...]`` the executors run on machines that have Spark, Java and a
Python of the driver's minor version, but neither this checkout nor its .venv. A job ships:

- the project's packages as a zip on ``--py-files`` (``spark.submit.pyFiles``), rebuilt from the
  checkout at every submit, so driver and executors run the same code;
- the executors' Python environment on ``spark.archives`` (Spark's "Python Package Management"
  with a packed virtualenv): a venv holding only what executor-side code imports, installed
  with constraints.txt's pins, packed as a tar.gz that Spark unpacks as ``./environment`` in
  each executor's work directory. Its interpreter is a symlink to the base interpreter it was
  built from (as with venv-pack): every node needs that Python at the same path.

Both land in ``var/dist/``; `patternalarm cluster pack` builds them, and every submit to a
cluster builds what is missing. spark-submit to a cluster runs in `submit_dir`, beside an
unpacked copy of the environment (see driver_dir).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from patternalarm.settings import PROJECT_ROOT, Settings, env_key

# What executor-side code imports (source and parse, the stateful detector, training's pandas
# functions) beyond the Python side of Spark, which each node's Spark puts on the path.
EXECUTOR_REQUIREMENTS = ("numpy", "numba", "pandas", "pyarrow", "confluent-kafka",
                         "psycopg2-binary", "pydantic", "pydantic-settings", "protobuf")
# The importable layers that jobs use (api/ serves HTTP and never runs in Spark).
SHIPPED_PACKAGES = ("patternalarm", "models", "streaming", "spark_jobs")
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"
ENV_NAME = "environment"  # the directory each executor unpacks the environment into
CODE_ZIP = "patternalarm-code.zip"

# Filesystems whose content only the machine that mounts them sees.
NODE_LOCAL_FILESYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "tmpfs", "ramfs",
    "overlay", "vfat", "exfat", "ntfs", "ntfs3", "apfs", "hfs"})


class StorageError(RuntimeError):
    pass


def is_cluster(master: str) -> bool:
    return not master.startswith("local")


def dist_dir(cfg: Settings) -> Path:
    return cfg.var_dir / "dist"


def build_code(cfg: Settings) -> Path:
    """The project's packages as one zip, replaced atomically (two submits may race)."""
    target = driver_dir(cfg) / CODE_ZIP
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in SHIPPED_PACKAGES:
            for path in sorted((PROJECT_ROOT / package).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    zf.write(path, path.relative_to(PROJECT_ROOT))
    tmp.replace(target)
    return target


def _env_key() -> str:
    """Changes whenever the environment's content would: pins, requirements, interpreter."""
    digest = hashlib.sha256(CONSTRAINTS.read_bytes())
    digest.update(" ".join(EXECUTOR_REQUIREMENTS).encode())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:12]


def env_archive(cfg: Settings) -> Path:
    return dist_dir(cfg) / f"executor-env-{_env_key()}.tar.gz"


def driver_dir(cfg: Settings) -> Path:
    """Where a driver submitting to a cluster runs: it holds the unpacked environment as
    ./environment and the code zip. Spark starts Python workers beside the driver too (a Python
    data source is planned in one) with the executors' interpreter path and PYTHONPATH, which
    are relative to the working directory."""
    return dist_dir(cfg) / f"driver-{_env_key()}"


def build_env(cfg: Settings, log=print) -> Path:
    """The executors' packed environment; built once per set of pins (~30 s from pip's cache)."""
    target, venv = env_archive(cfg), driver_dir(cfg) / ENV_NAME
    if target.exists() and (venv / "bin" / "python").exists():
        return target
    log(f"building the executors' Python environment {target.name} "
        f"({', '.join(EXECUTOR_REQUIREMENTS)})")
    shutil.rmtree(venv, ignore_errors=True)
    # From the base interpreter, not .venv's: the environment must not see the project's venv.
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True,
                       text=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-c", str(CONSTRAINTS),
                        *EXECUTOR_REQUIREMENTS], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"cannot build the executors' environment: {exc.stderr[-2000:]}") \
            from None
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    # Level 1: the archive travels once per executor and application; packing time matters more.
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for entry in sorted(venv.iterdir()):
            tar.add(entry, arcname=entry.name)
    tmp.replace(target)
    for stale in [*target.parent.glob("executor-env-*.tar.gz"),
                  *target.parent.glob("driver-*")]:
        if stale not in (target, venv.parent):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return target


def spark_conf(cfg: Settings, master: str) -> dict[str, str]:
    """Spark properties that ship code and environment to `master` (none for local[...]).

    Properties rather than spark-submit flags, so that SparkSubmitOperator's `conf` carries
    them the same way (spark-submit reads --py-files and --archives from these properties).
    """
    if not is_cluster(master):
        return {}
    archive = build_env(cfg)
    return {
        "spark.submit.pyFiles": str(build_code(cfg)),
        "spark.archives": f"{archive}#{ENV_NAME}",
        "spark.pyspark.python": f"./{ENV_NAME}/bin/python",
        # The Python workers Spark starts beside the driver (planning a Python data source)
        # see the code through this (executors also get it from spark.submit.pyFiles): the zip
        # lies in both their working directories.
        "spark.executorEnv.PYTHONPATH": CODE_ZIP,
        # The driver runs here (client mode), in the project's own environment.
        "spark.pyspark.driver.python": sys.executable,
    }


def submit_args(cfg: Settings, master: str) -> list[str]:
    return [arg for key, value in spark_conf(cfg, master).items()
            for arg in ("--conf", f"{key}={value}")]


def submit_dir(cfg: Settings, master: str) -> Path | None:
    """The working directory of spark-submit to `master` (driver_dir; None: anywhere)."""
    if not is_cluster(master):
        return None
    build_env(cfg)
    return driver_dir(cfg)


# --- storage every node reaches --------------------------------------------------------------

def single_machine(master: str, cfg: Settings) -> bool:
    """Whether every executor of `master` runs on this machine: local[...], or a standalone
    master on this machine's own address (what `patternalarm cluster up` starts: its workers
    are here too). YARN, Kubernetes and a master elsewhere are taken as many machines."""
    if not is_cluster(master):
        return True
    if not master.startswith("spark://"):
        return False
    own = {"localhost", cfg.bind_host, socket.gethostname()}
    for hostport in master.removeprefix("spark://").split(","):
        host = hostport.rsplit(":", 1)[0].strip("[]")
        if host not in own and not host.startswith("127.") and host != "::1":
            return False
    return True


def filesystem_type(path: Path) -> str:
    """Type of the filesystem that holds `path` (or would: the nearest existing parent)."""
    import psutil

    path = path.resolve()
    while not path.exists():
        path = path.parent
    best, fstype = "", ""
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, part.fstype
    return fstype


def check_storage(cfg: Settings, master: str) -> None:
    """Checkpoints (executors write the state store there) and the lake must be on a path every
    node reaches: on a many-machine master, a node-local filesystem stops the job at start."""
    if single_machine(master, cfg):
        return
    for name, path in (("checkpoints", cfg.checkpoint_dir), ("lake", cfg.lake_dir)):
        fstype = filesystem_type(path)
        if fstype in NODE_LOCAL_FILESYSTEMS:
            raise StorageError(
                f"the {name} directory {path} is on a node-local {fstype} filesystem, but "
                f"master {master} runs executors on other machines, which would each write "
                f"their own copy: set {env_key('shared_dir')} to a network filesystem (NFS, "
                "CephFS, Lustre, a FUSE mount of object storage...) mounted at the same path on "
                "every node")
