"""Contract tests: one suite of assertions run against every implementation of a storage Protocol."""
