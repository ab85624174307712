"""``bench.tracing_cost``'s telemetry block: off, or on at a ratio exporting to the sink."""

from __future__ import annotations

import msgspec

from bench.tracing_cost import telemetry
from core.config import TelemetryConfig


def _parsed(block: str) -> TelemetryConfig:
    return msgspec.convert(msgspec.yaml.decode(block)["telemetry"], TelemetryConfig)


def test_off_and_on_at_a_ratio() -> None:
    assert not _parsed(telemetry(4318, None)).tracing
    on = _parsed(telemetry(4318, 0.1))
    assert on.tracing and on.exporter == "otlp" and on.sample_ratio == 0.1
    assert on.otlp_endpoint == "http://127.0.0.1:4318/v1/traces"
