"""Which guardrails a request runs: its tenant's list then its alias's, built once per pair and snapshot; none costs one check."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import msgspec

from core.config import Config
from core.config_guardrails import GuardrailConfig
from policies.guardrails import GuardrailDeps, Guardrails, build_guardrails
from router.guardrail_index import GuardrailIndex
from router.guardrail_step import GuardrailStep
from router.metrics import Metrics

DEPLOYMENT = {"name": "d", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
SECRETS = {"kind": "secrets", "name": "tenant-secrets"}
TOOLS = {"kind": "tool_allowlist", "name": "alias-tools", "allow": ["f"]}
STREAM = {"kind": "secrets", "name": "alias-stream", "mode": "stream"}


def _config(tenant_guardrails: list[Any], alias_guardrails: list[Any]) -> Config:
    raw = {
        "deployments": [DEPLOYMENT],
        "models": [{"alias": "guarded", "deployments": ["d"], "guardrails": alias_guardrails}, {"alias": "plain", "deployments": ["d"]}],
        "tenants": [{"id": "careful", "guardrails": tenant_guardrails}, {"id": "relaxed"}],
    }
    return msgspec.convert(raw, Config)


def test_a_config_without_guardrails_has_no_index() -> None:
    assert GuardrailIndex.of(_config([], [])) is None


def test_a_requests_guardrails_are_its_tenants_then_its_aliases_built_once_per_pair() -> None:
    index = GuardrailIndex.of(_config([SECRETS], [TOOLS, STREAM]))
    assert index is not None
    built: list[list[str]] = []
    with ThreadPoolExecutor(1) as pool:

        def build(configs: Sequence[GuardrailConfig]) -> Guardrails:
            built.append([c.name for c in configs])
            return build_guardrails(configs, GuardrailDeps(pool))

        both = index.get("careful", "guarded", build)
        assert both is not None and both.pre.names == ("tenant-secrets", "alias-tools") and both.stream.names == ("alias-stream",)
        assert index.get("careful", "guarded", build) is both
        assert index.get("careful", "plain", build) is not None
        assert index.get("relaxed", "plain", build) is None  # neither has a list: nothing built
        # Tenants (and aliases) without a list share one entry: the cache is bounded by the config.
        alias_only = index.get("relaxed", "guarded", build)
        assert index.get("stored-in-postgres", "guarded", build) is alias_only
    assert built == [["tenant-secrets", "alias-tools", "alias-stream"], ["tenant-secrets"], ["alias-tools", "alias-stream"]]


def test_a_request_without_guardrails_gets_no_stream_screen() -> None:
    step = GuardrailStep(Metrics().registry, tenants=SimpleNamespace())  # type: ignore[arg-type]
    assert step.screen(SimpleNamespace(guardrails=None)) is None  # type: ignore[arg-type]
