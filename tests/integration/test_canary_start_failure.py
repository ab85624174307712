"""A candidate whose engine cannot start: the reload still applies, and the canary is rolled back."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec

from core.config import Config
from tests.integration.gateway_server import running_gateway
from tests.integration.test_canary import OPS, Fakes, canary, canary_actions, chat, eventually, fakes, raw_config

__all__ = ["fakes"]  # the fixture, used by name


async def test_a_candidate_that_cannot_start_is_rolled_back(fakes: Fakes, tmp_path: Path) -> None:
    raw = raw_config(fakes, tmp_path, {"steps": [50, 100], "interval_s": 0.5, "min_samples": 5})
    model = raw["models"][0]
    del model["canary"]
    async with running_gateway(msgspec.convert(raw, Config)) as (base, gateway), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/admin/v1/config", headers=OPS) as r:
            current = await r.json()
        live = current["config"]
        # The new version adds an in-process candidate whose model file does not exist.
        live["deployments"].append({"name": "local", "provider": "llamacpp", "model": "x", "privacy": "self_hosted",
                                    "options": {"model_path": str(tmp_path / "missing.gguf")}})
        live["models"][0]["canary"] = {"candidate": ["local"], "steps": [50, 100], "interval_s": 0.5, "min_samples": 5}
        headers = {**OPS, "if-match": f'"{current["version"]}"'}
        async with http.put(f"{base}/admin/v1/config", json={"config": live}, headers=headers) as r:
            assert r.status == 200, await r.text()
        assert "local" in gateway.snapshot.failed

        async def rolled_back() -> bool:
            return bool((await canary(http, base))["phase"] == "rolled_back")

        await eventually(rolled_back, 5, "rollback of a candidate that cannot start")
        assert (await canary_actions(http, base))[-1] == "rollback"
        # Every request is served by stable, before and after.
        for _ in range(10):
            status, headers_, _ = await chat(http, base)
            assert status == 200 and headers_["x-sluicegate-deployment"] == "stable"
