"""Integration fixtures: one local Spark session for the whole test session, and a Spark
standalone cluster (master + 2 workers x 1 core) for the tests that prove the cluster path."""

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


@pytest.fixture(scope="session")
def _cluster_stopped_at_the_end(stack) -> Iterator[None]:
    from patternalarm.cluster import Cluster

    yield
    Cluster(stack).down()


@pytest.fixture
def cluster(stack, _cluster_stopped_at_the_end) -> str:
    """The master URL of the session's cluster: started by its first user (and again after a
    test that stopped it), left running for the next, stopped with the session."""
    from patternalarm.cluster import Cluster

    return Cluster(stack).up()
