"""Integration fixtures: one local Spark session for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from models.spark import get_spark


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    # local[2] whatever the settings say: tests must not submit to a cluster.
    session = get_spark("patternalarm-tests", "local[2]")
    yield session
    session.stop()
