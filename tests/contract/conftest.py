"""Fixtures more than one contract suite uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.counter_harness import harness  # noqa: F401 - every counter store, for the suites that extend their contract
from tests.redis_cluster import ClusterUnavailable, LocalRedisCluster


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A local three-shard Redis Cluster for the whole session, torn down at its end."""
    cluster = LocalRedisCluster(3)
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        pytest.skip(f"no local Redis Cluster: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.stop()
