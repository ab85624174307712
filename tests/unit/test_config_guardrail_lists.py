"""``guardrails:`` lists on tenants and aliases: checked when the document is read, errors naming the key."""

from __future__ import annotations

import pytest

from core.config import ConfigError
from core.config_check import decode_config

HEAD = b"""
deployments: [{name: d, provider: openai, base_url: "http://127.0.0.1:9/v1", model: m}]
models: [{alias: a, deployments: [d]}]
"""


def _refused(body: bytes) -> str:
    with pytest.raises(ConfigError) as caught:
        decode_config(HEAD + body, "c.yaml")
    return str(caught.value)


def test_an_entrys_own_check_names_the_key_down_to_the_pattern() -> None:
    message = _refused(b"tenants: [{id: t, guardrails: [{kind: secrets, name: s}, {kind: deny_patterns, name: p, patterns: ['(a+)+']}]}]")
    assert "key `tenants[0].guardrails[1].patterns[0]`: repeats a repeated group" in message


def test_names_are_unique_within_a_list_and_a_moderation_guardrail_names_a_deployment() -> None:
    message = _refused(b"tenants: [{id: t, guardrails: [{kind: secrets, name: s}, {kind: secrets, name: s, mode: post}]}]")
    assert "key `tenants[0].guardrails`: `guardrails` names 's' twice" in message
    message = _refused(b"models: [{alias: b, deployments: [d], guardrails: [{kind: moderation, name: m, deployment: nope}]}]")
    assert "key `models[0].guardrails[0].deployment`: unknown deployment 'nope'" in message


def test_an_unknown_kind_or_a_mode_the_kind_lacks_is_refused() -> None:
    assert "guardrails[0]" in _refused(b"tenants: [{id: t, guardrails: [{kind: astrology, name: s}]}]")
    message = _refused(b"tenants: [{id: t, guardrails: [{kind: tool_allowlist, name: s, allow: [f], mode: stream}]}]")
    assert "key `tenants[0].guardrails[0].mode`" in message


def test_stored_tenants_may_take_their_guardrails_from_the_live_document() -> None:
    state = b'state: {tenants: postgres, postgres_dsn: "postgresql://x/y"}\n'
    config = decode_config(HEAD + state + b"tenants: [{id: t, guardrails: [{kind: secrets, name: s}]}]", "c.yaml")
    assert [g.name for g in config.tenants[0].guardrails] == ["s"]
    assert "sets only `routing`, `pii`, `cache` and `guardrails`" in _refused(state + b"tenants: [{id: t, priority: high}]")
