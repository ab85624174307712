"""One validation for `config check`, start-up and reload; snapshots that reuse what did not change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.config import Config, ConfigError, LiveConfig
from core.config_check import decode_live
from core.config_version import document_hash
from router.cli import main
from router.config_diff import diff
from router.config_resolve import resolve
from router.snapshot import build


def _raw(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "deployments": [
            {"name": "a", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
            {"name": "b", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m2"},
        ],
        "models": [{"alias": "x", "deployments": ["a"], "max_concurrent": 4}],
        "state": {"ledger": "off"},
    }
    raw.update(extra)
    return raw


def _config(raw: dict[str, Any]) -> Config:
    return msgspec.convert(raw, Config)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"policies": {"pii": {"action": "shred"}}}, "policies.pii"),
        ({"state": {"counters": "redis"}}, "state.redis_url"),
        ({"state": {"config": "postgres"}}, "state.postgres_dsn"),
        ({"state": {"tenants": "postgres", "postgres_dsn": "postgresql://db/x"}, "tenants": [{"id": "t", "limits": {"rpm": 1}}]},
         "tenants[0].limits"),
        ({"models": [{"alias": "x", "deployments": ["a"], "canary": {"candidate": ["zz"]}}]}, "models[0].canary.candidate[0]"),
        ({"models": [{"alias": "x", "deployments": ["a"], "canary": {"candidate": ["a"]}}]}, "models[0].canary.candidate[0]"),
        ({"models": [{"alias": "x", "deployments": ["a"], "canary": {"candidate": ["b"], "steps": [50, 10]}}]}, "models[0].canary.steps"),
        ({"models": [{"alias": "x", "deployments": ["a"], "canary": {"candidate": ["b"], "state": {"phase": "shadow"}}}]},
         "models[0].canary.state.phase"),
    ],
)
def test_config_check_refuses_what_serve_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], key: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_bytes(msgspec.yaml.encode(_raw(**change)))
    assert main(["config", "check", str(path)]) == 1
    assert f"`{key}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        resolve(_config(_raw(**change)))


def test_tenants_in_postgres_take_their_routing_and_pii_policies_from_the_live_document() -> None:
    raw = _raw(
        state={"tenants": "postgres", "postgres_dsn": "postgresql://db/x", "ledger": "off"},
        tenants=[{"id": "t", "routing": {"self_hosted_only": True}, "pii": {"action": "block"}}],
    )
    policies = resolve(_config(raw)).policies
    assert policies.routing("t").self_hosted_only and not policies.routing("other").self_hosted_only
    pii = policies.pii("t")
    assert pii is not None and pii.action == "block"


def test_a_promoted_canary_may_name_its_candidate_in_the_first_tier() -> None:
    model = {"alias": "x", "deployments": ["b"], "canary": {"candidate": ["b"], "state": {"phase": "promoted"}}}
    resolve(_config(_raw(models=[model])))


def test_a_live_document_decodes_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.deployments\[0\].*'nope'"):
        decode_live(msgspec.json.encode({"models": [{"alias": "x", "deployments": ["nope"]}]}), "config")
    with pytest.raises(ConfigError, match="`deploymnts`"):
        decode_live(b'{"deploymnts": []}', "config")


def test_equal_documents_hash_equal_whatever_the_key_order() -> None:
    a = decode_live(b'{"deployments": [], "models": []}', "a")
    b = decode_live(b'{"models": [], "deployments": []}', "b")
    assert document_hash(a) == document_hash(b) != document_hash(
        LiveConfig(alerts=msgspec.convert({"webhook_url": "http://x"}, type(a.alerts)))
    )


def test_a_rebuild_keeps_engines_breakers_and_queues_that_did_not_change() -> None:
    first = build(resolve(_config(_raw())), 1, "h1", None).snapshot
    raw = _raw()
    raw["deployments"][0]["price"] = {"input_per_mtok": 5}
    raw["deployments"][1]["base_url"] = "http://127.0.0.1:10/v1"
    built = build(resolve(_config(raw)), 2, "h2", first)
    second = built.snapshot
    a1, a2 = first.deployments["a"], second.deployments["a"]
    assert a2.engine is a1.engine and a2.breaker is a1.breaker and a2.latency is a1.latency
    assert a2.config.price.input_per_mtok == 5 and a1.config.price.input_per_mtok == 0
    # b's URL changed: a new engine, the old one retired once idle
    assert second.deployments["b"].engine is not first.deployments["b"].engine
    assert built.new.keys() == {"b"} and built.retired == [first.deployments["b"].engine]
    assert second.router.get("x").queue is first.router.get("x").queue
    # the resilience settings changed: new breakers, same engines
    raw["resilience"] = {"breaker_open_s": 3}
    third = build(resolve(_config(raw)), 3, "h3", second).snapshot
    assert third.deployments["a"].engine is a1.engine and third.deployments["a"].breaker is not a1.breaker


def test_a_diff_names_records_by_their_name() -> None:
    old = {"tenants": [{"id": "t1", "limits": {"rpm": 1}}, {"id": "t2"}], "models": [{"alias": "x", "deployments": ["a"]}]}
    new = {"tenants": [{"id": "t0"}, {"id": "t1", "limits": {"rpm": 2}}, {"id": "t2"}], "models": [{"alias": "x", "deployments": ["b"]}]}
    changes = diff(old, new)
    assert {"path": "tenants[t0]", "op": "added", "new": {"id": "t0"}} in changes
    assert {"path": "tenants[t1].limits.rpm", "op": "changed", "old": 1, "new": 2} in changes
    assert {"path": "models[x].deployments[0]", "op": "changed", "old": "a", "new": "b"} in changes
    assert len(changes) == 3
