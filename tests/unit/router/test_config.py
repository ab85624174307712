from __future__ import annotations

import pytest

from core.config import ConfigError, SecretRef
from core.config_check import decode_config, load_config

GOOD = b"""
server: {port: 9000}
deployments:
  - name: d1
    provider: openai
    model: gpt-4o
    api_key: {env: SG_TEST_KEY}
    price: {input_per_mtok: 2500000, output_per_mtok: 10000000}
models:
  - alias: gpt-4o
    deployments: [d1]
tenants:
  - id: acme
    keys:
      - id: k1
        hash: hmac-sha256:0000000000000000000000000000000000000000000000000000000000000000
"""


def test_good_yaml_decodes_with_defaults() -> None:
    config = decode_config(GOOD, "gw.yaml")
    assert config.server.port == 9000
    assert config.server.host == "127.0.0.1"
    assert config.deployments[0].price.output_per_mtok == 10_000_000
    assert config.deployments[0].privacy == "cloud"


def test_toml_is_accepted(tmp_path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[server]\nport = 9001\n[[tenants]]\nid = "t"\n')
    assert load_config(path).server.port == 9001


def test_unknown_key_names_key_and_file() -> None:
    with pytest.raises(ConfigError) as info:
        decode_config(GOOD.replace(b"    model: gpt-4o\n", b"    model: gpt-4o\n    colour: blue\n"), "gw.yaml")
    message = str(info.value)
    assert "gw.yaml" in message
    assert "colour" in message
    assert "deployments[0]" in message


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"gw.yaml: key `server.port`"):
        decode_config(b"server: {port: high}\n", "gw.yaml")


def test_float_price_is_refused() -> None:
    with pytest.raises(ConfigError, match="input_per_mtok"):
        decode_config(GOOD.replace(b"2500000", b"2.5"), "gw.yaml")


def test_unknown_deployment_reference() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\].deployments\[0\].*'nope'"):
        decode_config(GOOD.replace(b"deployments: [d1]", b"deployments: [nope]"), "gw.yaml")


def test_duplicate_names() -> None:
    text = GOOD + b"  - id: acme\n"
    with pytest.raises(ConfigError, match="duplicate name 'acme'"):
        decode_config(text, "gw.yaml")


def test_plaintext_key_instead_of_hash_is_refused() -> None:
    with pytest.raises(ConfigError, match="hash"):
        decode_config(GOOD.replace(b"hmac-sha256:" + b"0" * 64, b"sk-plaintext"), "gw.yaml")


def test_invalid_yaml_is_reported() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        decode_config(b"server: [unclosed\n", "gw.yaml")


def test_secret_ref_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        decode_config(GOOD.replace(b"{env: SG_TEST_KEY}", b"{env: A, file: /x}"), "gw.yaml")


def test_secret_resolution_never_echoes_value(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SG_TEST_SECRET", "sk-very-secret")
    assert SecretRef(env="SG_TEST_SECRET").resolve() == "sk-very-secret"
    monkeypatch.delenv("SG_TEST_SECRET")
    with pytest.raises(ConfigError) as info:
        SecretRef(env="SG_TEST_SECRET").resolve()
    assert "sk-very-secret" not in str(info.value)
    secret_file = tmp_path / "key"
    secret_file.write_text("sk-from-file\n")
    assert SecretRef(file=str(secret_file)).resolve() == "sk-from-file"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/sluicegate.yaml")


def test_money_budget_must_fit_the_counter() -> None:
    too_big = b"tenants:\n  - id: t\n    budgets: [{kind: money, period: monthly, limit: 10000000000000}]\n"
    with pytest.raises(ConfigError, match="at most 9223372036854"):
        decode_config(too_big, "gw.yaml")
    fits = too_big.replace(b"10000000000000", b"9223372036854")
    assert decode_config(fits, "gw.yaml").tenants[0].budgets[0].limit == 9_223_372_036_854


def test_gc_thresholds_default_and_validation() -> None:
    assert decode_config(GOOD, "gw.yaml").server.gc_thresholds == [10_000, 20, 20]
    custom = decode_config(GOOD.replace(b"server: {port: 9000}", b"server: {port: 9000, gc_thresholds: [700, 10, 10]}"), "gw.yaml")
    assert custom.server.gc_thresholds == [700, 10, 10]
    for bad in (b"[700, 10]", b"[0, 10, 10]", b"[700, 10, 10, 10]"):
        with pytest.raises(ConfigError, match="gc_thresholds"):
            decode_config(GOOD.replace(b"server: {port: 9000}", b"server: {gc_thresholds: " + bad + b"}"), "gw.yaml")
