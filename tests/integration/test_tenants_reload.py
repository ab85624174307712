"""Tenants made through the admin API outlive reloads of the config file (the embedded tenant store).

Over HTTP: an operator creates a tenant and a key, and disables a tenant the
file defines; then the file is edited (as editors do, a new file renamed over
the old one), taken over the tenant and later let go of it again. The tenant,
its key and the operator's change are all still there after each reload.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from bench.fake_upstream import FakeUpstream
from core.config_check import load_config
from router.auth import hash_api_key
from router.gateway import Gateway
from tests.integration.gateway_server import running_gateway

OPS_KEY = "sk-tenants-reload-ops-0123456789"
OPS = {"authorization": f"Bearer {OPS_KEY}"}


def _raw(upstream: str, workdir: Path, *extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"log_level": "warning", "access_log": False},
        "deployments": [{"name": "d", "provider": "openai", "base_url": upstream, "model": "fake-model"}],
        "models": [{"alias": "m", "deployments": ["d"]}],
        "tenants": [
            {"id": "ops", "keys": [{"id": "ops", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:*"]}]},
            {"id": "filed", "name": "In the file"},
            *extra,
        ],
        "state": {
            "ledger_path": str(workdir / "ledger.sqlite"), "ledger_spool_path": str(workdir / "spool"),
            "config_watch_debounce_s": 0.05, "config_watch_poll_s": 0.1,
        },
    }  # fmt: skip


def _write(path: Path, raw: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.yaml.encode(raw))
    tmp.replace(path)


async def _reloaded(gateway: Gateway, path: Path, raw: dict[str, Any]) -> None:
    version = gateway.snapshot.version
    _write(path, raw)
    async with asyncio.timeout(10):
        while gateway.snapshot.version <= version:
            await asyncio.sleep(0.02)


async def test_tenants_and_keys_created_through_the_admin_api_survive_reloads(fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    raw = _raw(fake_upstream.url, tmp_path)
    _write(path, raw)
    config = load_config(path)
    gateway = Gateway(config, source_path=str(path))
    async with running_gateway(config, gateway) as (base, _), aiohttp.ClientSession() as http:

        async def get(url: str, key: str = OPS_KEY) -> tuple[int, Any]:
            async with http.get(base + url, headers={"authorization": f"Bearer {key}"}) as r:
                return r.status, await r.json()

        async with http.post(f"{base}/admin/v1/tenants", json={"id": "acme", "name": "Acme"}, headers=OPS) as r:
            assert r.status == 201, await r.text()
        async with http.post(f"{base}/admin/v1/tenants/acme/keys", json={"id": "acme-1"}, headers=OPS) as r:
            assert r.status == 201
            key = (await r.json())["key"]
        async with http.post(f"{base}/admin/v1/tenants/filed/disable", headers=OPS) as r:
            assert r.status == 200

        async def intact() -> None:
            status, tenant = await get("/admin/v1/tenants/acme")
            assert status == 200 and tenant["name"] == "Acme"
            status, keys = await get("/admin/v1/tenants/acme/keys")
            assert status == 200 and [k["id"] for k in keys["data"]] == ["acme-1"]
            assert (await get("/v1/models", key))[0] == 200
            status, filed = await get("/admin/v1/tenants/filed")
            assert status == 200 and filed["disabled"] is True

        # An unrelated edit of the file.
        await _reloaded(gateway, path, {**raw, "models": [{"alias": "m", "deployments": ["d"]}, {"alias": "m2", "deployments": ["d"]}]})
        await intact()
        # The file takes the tenant over (to give it a policy), then lets it go again.
        await _reloaded(gateway, path, _raw(fake_upstream.url, tmp_path, {"id": "acme", "name": "Acme", "trace_content": True}))
        await intact()
        await _reloaded(gateway, path, raw)
        await intact()
