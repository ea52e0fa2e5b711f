"""SparkSubmitOperator for the project's jobs: on a cluster master, the job takes the project's
code and the executors' Python environment with it (patternalarm/shipping.py)."""

from __future__ import annotations

import os
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator


class ShippedSparkSubmitOperator(SparkSubmitOperator):
    ui_color = "#ffe5cc"

    def execute(self, context: Any) -> None:
        from patternalarm import settings, shipping

        # The spark_default connection and this setting name the same master: both come from
        # the environment `patternalarm up` gives Airflow (services.airflow_env).
        cfg = settings.get()
        # At run time, not parse time: building the code zip is work the scheduler must not do.
        self._conf = {**(self._conf or {}), **shipping.spark_conf(cfg, cfg.spark_master)}
        workdir = shipping.submit_dir(cfg, cfg.spark_master)
        if workdir:
            # The hook runs spark-submit in this process's directory; the task has it alone.
            os.chdir(workdir)
        super().execute(context)
