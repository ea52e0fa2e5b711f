"""The one SparkSession builder: every job, test and benchmark gets its session here."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from patternalarm import java, shipping
from patternalarm import settings as settings_mod


def get_spark(app_name: str, master: str | None = None, *, ui: bool = False,
              shuffle_partitions: int = 4) -> SparkSession:
    """A session on ``master`` (default: spark-submit's ``--master``, else the spark_master
    setting), or the running one.

    Workers must run this interpreter, or the first Python UDF fails with an opaque socket
    timeout; and Spark binds to whatever the hostname resolves to unless SPARK_LOCAL_IP is set.
    A laptop's few cores gain nothing from the default 200 shuffle partitions. On a master
    whose executors run on other machines, checkpoints and the lake must be where they all
    reach: refused at start otherwise (shipping.check_storage).
    """
    cfg = settings_mod.get()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", cfg.bind_host)
    os.environ.setdefault("JAVA_HOME", str(java.find(cfg)))
    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit (which starts this Python with a gateway port) its --master stands, as
    # for any Spark job: the setting here once overrode it, and jobs submitted to a cluster ran
    # in local mode on the driver.
    if master or "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(master or cfg.spark_master)
    spark = (builder
             .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
             .config("spark.ui.enabled", str(ui).lower())
             .config("spark.driver.bindAddress", os.environ["SPARK_LOCAL_IP"])
             .getOrCreate())
    shipping.check_storage(cfg, spark.sparkContext.master)
    return spark
