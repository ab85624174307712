"""The `guardrails:` config: each kind's keys and modes, errors that name the key."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from core.config_guardrails import (
    DEFAULT_SECRET_DETECTORS,
    MAX_PATTERN_CHARS,
    MAX_PATTERNS,
    SECRET_DETECTORS,
    DenyPatterns,
    GuardrailConfig,
    Moderation,
    Secrets,
    ToolAllowlist,
    check_guardrails,
)
from policies.guardrails_secrets import detector_classes


def load(*entries: dict[str, Any]) -> list[GuardrailConfig]:
    return msgspec.convert(list(entries), list[GuardrailConfig])


def error(*entries: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as caught:
        load(*entries)
    return str(caught.value)


def test_each_kind_loads_with_its_defaults() -> None:
    loaded = load(
        {"kind": "tool_allowlist", "name": "tools", "allow": ["get_weather"]},
        {"kind": "secrets", "name": "secrets", "mode": "stream", "window_chars": 128},
        {"kind": "deny_patterns", "name": "deny", "patterns": [r"project\s+zeus"], "ignore_case": True},
        {"kind": "moderation", "name": "mod", "deployment": "omni", "categories": ["violence"], "threshold": 0.7},
        {"kind": "prompt_injection", "name": "inj"},
        {"kind": "plugin", "name": "custom", "plugin": "acme.pii", "mode": "post", "on_error": "fail_open"},
    )
    assert [g.kind for g in loaded] == ["tool_allowlist", "secrets", "deny_patterns", "moderation", "prompt_injection", "plugin"]
    tools, secrets, deny, mod = loaded[:4]
    assert isinstance(tools, ToolAllowlist)
    assert (tools.mode, tools.action, tools.on_error, tools.timeout_s) == ("pre", "block", "fail_closed", 1.0)
    assert isinstance(secrets, Secrets) and secrets.window == 128 and secrets.detector_names() == DEFAULT_SECRET_DETECTORS
    assert isinstance(deny, DenyPatterns) and deny.compiled()[0].search("PROJECT  Zeus")
    assert isinstance(mod, Moderation) and mod.timeout_s == 2.0


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ({"kind": "tool_allowlist", "name": "t", "allow": [], "mode": "stream"}, "`mode` 'stream' is not supported by kind tool_allowlist"),
        ({"kind": "tool_allowlist", "name": "t", "allow": [], "mode": "post"}, "`mode` 'post'"),
        ({"kind": "moderation", "name": "m", "deployment": "d", "mode": "stream"}, "`mode` 'stream'"),
        ({"kind": "prompt_injection", "name": "p", "mode": "post"}, "`mode` 'post'"),
        ({"kind": "secrets", "name": "s", "window_chars": 64}, "`window_chars` applies only to `mode: stream`"),
        ({"kind": "secrets", "name": "s", "mode": "stream", "window_chars": 8}, "`$[0].window_chars`"),
        ({"kind": "secrets", "name": "s", "detectors": ["NoSuchDetector"]}, "`detectors` names unknown detectors ['NoSuchDetector']"),
        ({"kind": "secrets", "name": "s", "detectors": []}, "`detectors` is empty"),
        ({"kind": "deny_patterns", "name": "d", "patterns": []}, f"`patterns` must hold 1 to {MAX_PATTERNS}"),
        ({"kind": "deny_patterns", "name": "d", "patterns": ["ok"] * (MAX_PATTERNS + 1)}, "`patterns` must hold"),
        ({"kind": "deny_patterns", "name": "d", "patterns": ["x" * (MAX_PATTERN_CHARS + 1)]}, "`patterns[0]` is longer than"),
        ({"kind": "deny_patterns", "name": "d", "patterns": ["fine", "(unclosed"]}, "`patterns[1]` is not a valid regular expression"),
        ({"kind": "deny_patterns", "name": "d", "patterns": ["(a+)+$"]}, "`patterns[0]` repeats a repeated group"),
        ({"kind": "deny_patterns", "name": "d", "patterns": [r"x(\w*\s?)*y"]}, "`patterns[0]` repeats a repeated group"),
        ({"kind": "deny_patterns", "name": "d", "patterns": ["a|b*"]}, "`patterns[0]` matches the empty string"),
        ({"kind": "moderation", "name": "m", "deployment": "d", "threshold": 1.5}, "`$[0].threshold`"),
        ({"kind": "moderation", "name": "m"}, "missing required field `deployment`"),
        ({"kind": "tool_allowlist", "name": "t", "allow": ["a"], "patterns": ["x"]}, "unknown field `patterns`"),
        ({"kind": "antivirus", "name": "t"}, "Invalid value 'antivirus' - at `$[0].kind`"),
        ({"kind": "secrets", "name": "s", "action": "redact"}, "`$[0].action`"),
        ({"kind": "secrets", "name": "s", "on_error": "retry"}, "`$[0].on_error`"),
        ({"kind": "secrets", "name": "s", "timeout_s": 0}, "`$[0].timeout_s`"),
        ({"kind": "secrets", "name": "bad name"}, "`$[0].name`"),
    ],
)
def test_a_bad_entry_names_its_key(entry: dict[str, Any], names: str) -> None:
    assert names in error(entry)


def test_bounded_repeats_inside_a_repeat_are_fine() -> None:
    (deny,) = load({"kind": "deny_patterns", "name": "d", "patterns": [r"(\d{3}-)+\d{4}", r"(?i)\bconfidential\b"]})
    assert isinstance(deny, DenyPatterns) and deny.compiled()[0].search("555-555-1234")


def test_names_are_unique_within_a_list() -> None:
    entries = load({"kind": "secrets", "name": "same"}, {"kind": "prompt_injection", "name": "same"})
    with pytest.raises(ValueError, match="`guardrails` names 'same' twice"):
        check_guardrails(entries)
    check_guardrails(entries[:1])


def test_the_detector_names_are_the_librarys() -> None:
    # The config keeps the names statically (no import of detect-secrets at load): they must not drift.
    assert set(detector_classes()) == SECRET_DETECTORS
