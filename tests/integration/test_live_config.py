"""Live config in one process: the admin routes, the watched file, and what a reload keeps."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from core.config import Config
from core.config_check import load_config
from router.auth import hash_api_key
from router.gateway import Gateway
from tests.conftest import TEST_KEY
from tests.integration.gateway_server import running_gateway

OPS_KEY = "sk-live-config-ops-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "My email is ann@example.com"}], "max_tokens": 3}


def _raw(upstream: str, **tenant: Any) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="sluicegate-live-")
    return {
        "server": {"log_level": "warning"},
        "deployments": [{"name": "d", "provider": "openai", "base_url": upstream, "model": "fake-model",
                         "price": {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000}}],
        "models": [{"alias": "m", "deployments": ["d"]}],
        "tenants": [
            {"id": "t", "keys": [{"id": "k", "hash": hash_api_key(TEST_KEY)}], **tenant},
            {"id": "ops", "keys": [{"id": "ops", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:*"]}]},
        ],
        "state": {"ledger_path": f"{directory}/ledger.sqlite", "ledger_spool_path": f"{directory}/spool", "config_watch_debounce_s": 0.05},
    }


def _write(path: Path, raw: dict[str, Any]) -> None:
    path.write_bytes(msgspec.yaml.encode(raw))


OPS = {"authorization": f"Bearer {OPS_KEY}"}
USER = {"authorization": f"Bearer {TEST_KEY}"}


async def _current(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base}/admin/v1/config", headers=OPS) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        assert r.headers["etag"] == f'"{body["version"]}"'
        return body["version"], body["config"]


async def _put(http: aiohttp.ClientSession, base: str, config: dict[str, Any], version: int | None) -> aiohttp.ClientResponse:
    headers = {**OPS, **({"if-match": f'"{version}"'} if version is not None else {})}
    async with http.put(f"{base}/admin/v1/config", json={"config": config, "reason": "test"}, headers=headers) as r:
        await r.read()
        return r


async def _chat(http: aiohttp.ClientSession, base: str, body: dict[str, Any] = CHAT) -> tuple[int, dict[str, Any], Any]:
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=USER) as r:
        return r.status, dict(r.headers), await r.json()


async def test_a_price_a_limit_and_a_pii_action_change_through_the_admin_route(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(msgspec.convert(_raw(fake_upstream.url), Config)) as (base, gateway), aiohttp.ClientSession() as http:
        version, live = await _current(http, base)
        engine = gateway.deployments["d"].engine
        status, headers, _ = await _chat(http, base)
        assert status == 200 and headers["x-sluicegate-config-version"] == str(version)

        live["deployments"][0]["price"] = {"input_per_mtok": 7_000_000, "output_per_mtok": 9_000_000}
        live["tenants"][0]["limits"] = {"rpm": 2}
        live["tenants"][0]["pii"] = {"action": "block", "entities": ["EMAIL_ADDRESS"]}
        r = await _put(http, base, live, version)
        assert r.status == 200
        new_version = int(r.headers["etag"].strip('"'))
        assert new_version == version + 1

        # The PII action: the address is refused now.
        status, headers, body = await _chat(http, base)
        assert status == 400 and body["error"]["code"] == "pii_blocked", body
        clean = {**CHAT, "messages": [{"role": "user", "content": "hello"}]}
        status, headers, _ = await _chat(http, base, clean)
        assert status == 200 and headers["x-sluicegate-config-version"] == str(new_version)
        # The rate limit: two a minute, and the third is refused.
        statuses = [(await _chat(http, base, clean))[0] for _ in range(3)]
        assert 429 in statuses
        # The price: the deployment kept its engine (same spec), and serves at the new price.
        assert gateway.deployments["d"].engine is engine
        assert gateway.deployments["d"].config.price.input_per_mtok == 7_000_000


async def test_conflicts_invalid_documents_and_unknown_versions(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(msgspec.convert(_raw(fake_upstream.url), Config)) as (base, _), aiohttp.ClientSession() as http:
        version, live = await _current(http, base)
        assert (await _put(http, base, live, version)).status == 200
        # A writer holding the old version loses: 409, nothing written.
        r = await _put(http, base, live, version)
        assert r.status == 409
        assert (await _current(http, base))[0] == version + 1

        broken = msgspec.json.decode(msgspec.json.encode(live))
        broken["models"][0]["deployments"] = ["nope"]
        async with http.put(f"{base}/admin/v1/config", json={"config": broken}, headers=OPS) as resp:
            assert resp.status == 422
            message = (await resp.json())["error"]["message"]
            assert "models[0].deployments[0]" in message and "nope" in message
        typo = {**live, "deployment": []}
        async with http.put(f"{base}/admin/v1/config", json={"config": typo}, headers=OPS) as resp:
            assert resp.status == 422 and "deployment" in (await resp.json())["error"]["message"]
        pii = msgspec.json.decode(msgspec.json.encode(live))
        pii["tenants"][0]["pii"] = {"action": "shred"}
        async with http.put(f"{base}/admin/v1/config", json={"config": pii}, headers=OPS) as resp:
            assert resp.status == 422 and "tenants[0].pii" in (await resp.json())["error"]["message"]
        assert (await _current(http, base))[0] == version + 1  # still serving the last good one

        async with http.post(f"{base}/admin/v1/config/rollback", json={"version": 999}, headers=OPS) as resp:
            assert resp.status == 404 and (await resp.json())["error"]["code"] == "version_not_found"
        async with http.get(f"{base}/admin/v1/config/versions/999", headers=OPS) as resp:
            assert resp.status == 404
        async with http.get(f"{base}/admin/v1/config", headers=USER) as resp:
            assert resp.status == 403


async def test_history_diff_and_rollback(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(msgspec.convert(_raw(fake_upstream.url), Config)) as (base, gateway), aiohttp.ClientSession() as http:
        first, live = await _current(http, base)
        live["tenants"][0]["limits"] = {"rpm": 1000}
        assert (await _put(http, base, live, first)).status == 200
        async with http.get(f"{base}/admin/v1/config/history", headers=OPS) as r:
            history = (await r.json())["data"]
        assert [h["version"] for h in history] == [first + 1, first]
        assert history[0]["actor"] and history[0]["reason"] == "test"
        async with http.get(f"{base}/admin/v1/config/diff?from={first}&to={first + 1}", headers=OPS) as r:
            changes = (await r.json())["changes"]
        assert {"path": "tenants[t].limits.rpm", "op": "changed", "old": None, "new": 1000} in changes
        async with http.post(f"{base}/admin/v1/config/rollback", json={"version": first}, headers=OPS) as r:
            assert r.status == 200
            rolled = await r.json()
        assert rolled["version"] == first + 2
        assert gateway.snapshot.version == first + 2
        assert gateway.snapshot.config.tenants[0].limits.rpm is None
        async with http.get(f"{base}/admin/v1/audit", headers=OPS) as r:
            actions = [(e["action"], e["target"]) for e in (await r.json())["data"]]
        assert ("config.commit", f"config:v{first + 2}") in actions


async def _wait_version(gateway: Any, version: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while gateway.snapshot.version < version:
            await asyncio.sleep(0.02)


async def test_the_watched_file_reloads_and_a_broken_edit_keeps_the_old_snapshot(
    fake_upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gw.yaml"
    raw = _raw(fake_upstream.url)
    _write(path, raw)
    config = load_config(path)
    gateway = Gateway(config, source_path=str(path))
    async with running_gateway(config, gateway) as (base, _), aiohttp.ClientSession() as http:
        start = gateway.snapshot.version
        raw["tenants"][0]["limits"] = {"rpm": 1}
        tmp = tmp_path / "gw.yaml.tmp"
        _write(tmp, raw)
        tmp.replace(path)  # as editors do: a new file renamed over the old one
        await _wait_version(gateway, start + 1)
        statuses = [(await _chat(http, base, {**CHAT, "messages": [{"role": "user", "content": "hi"}]}))[0] for _ in range(2)]
        assert statuses == [200, 429]

        caplog.set_level(logging.ERROR, logger="sluicegate.config")
        raw["models"][0]["deployments"] = ["missing"]
        _write(path, raw)
        async with asyncio.timeout(5):
            while "models[0].deployments[0]" not in caplog.text:
                await asyncio.sleep(0.02)
        assert gateway.snapshot.version == start + 1
        status, _, _ = await _chat(http, base, {**CHAT, "messages": [{"role": "user", "content": "hi"}], "model": "m"})
        assert status == 429  # still the same snapshot: the limit holds, the alias still routes


async def test_a_version_whose_analyzer_cannot_load_is_not_stored_and_the_reconcile_survives(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config_version import ConfigVersion, document_hash
    from policies import pii_engine

    # As on an image without the spaCy model: named-entity recognition cannot load.
    monkeypatch.setattr(pii_engine, "_engine", pii_engine.PiiEngine(ner_model="not_installed_model"))
    raw = _raw(fake_upstream.url)
    raw["state"]["config_reconcile_s"] = 0.1
    async with running_gateway(msgspec.convert(raw, Config)) as (base, gateway), aiohttp.ClientSession() as http:
        version, live = await _current(http, base)
        live["tenants"][0]["pii"] = {"action": "block", "entities": ["PERSON"]}
        r = await _put(http, base, live, version)
        assert r.status == 503
        store = gateway.reloader.store
        latest = await store.latest()
        assert latest is not None and latest.version == version  # nothing stored
        # A version stored elsewhere whose analyzer cannot load here, then a good one, announcements lost:
        # the first is refused, the loop lives on and serves the second.
        for pii in ({"action": "block", "entities": ["PERSON"]}, None):
            live["tenants"][0]["pii"] = pii
            doc = msgspec.convert(live, type(gateway.config.live()))
            n = (await store.latest()).version + 1  # type: ignore[union-attr]
            store._versions.append(  # type: ignore[attr-defined]
                ConfigVersion(version=n, hash=document_hash(doc), actor="elsewhere", reason="", created_at=0.0, document=doc)
            )
            await asyncio.sleep(0.4)
        assert gateway.snapshot.version == version + 2
