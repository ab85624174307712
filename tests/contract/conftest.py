"""Fixtures more than one contract suite uses."""

from tests.contract.test_counter_store import harness  # noqa: F401 - both counter stores, for the suites that extend their contract
