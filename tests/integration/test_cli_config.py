"""`sluicegate config apply|show|history|diff|rollback` and `canary status` against a running gateway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from bench.fake_upstream import FakeUpstream
from core.config import Config
from router.cli import main
from tests.integration.gateway_server import running_gateway
from tests.integration.test_live_config import OPS_KEY, _raw


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_the_config_commands_go_through_the_admin_api(
    fake_upstream: FakeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _raw(fake_upstream.url)
    async with running_gateway(msgspec.convert(raw, Config)) as (base, gateway):
        monkeypatch.delenv("SLUICEGATE_ADMIN_KEY", raising=False)
        code, _, err = await _cli(capsys, "config", "show", "--url", base)
        assert code == 1 and "SLUICEGATE_ADMIN_KEY" in err
        monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", OPS_KEY)
        start = gateway.snapshot.version

        raw["tenants"][0]["limits"] = {"rpm": 7}
        path = tmp_path / "next.yaml"
        path.write_bytes(msgspec.yaml.encode(raw))
        code, out, err = await _cli(capsys, "config", "apply", str(path), "--url", base, "--if-match", str(start), "--reason", "raise rpm")
        assert code == 0, err
        assert json.loads(out)["version"] == start + 1
        assert gateway.snapshot.config.tenants[0].limits.rpm == 7
        # the same If-Match again: someone (we) wrote since
        code, _, err = await _cli(capsys, "config", "apply", str(path), "--url", base, "--if-match", str(start))
        assert code == 1 and err.startswith("sluicegate: 409")

        raw["models"][0]["deployments"] = ["missing"]
        path.write_bytes(msgspec.yaml.encode(raw))
        code, _, err = await _cli(capsys, "config", "apply", str(path), "--url", base)
        assert code == 1 and "models[0].deployments[0]" in err

        code, out, _ = await _cli(capsys, "config", "history", "--url", base)
        lines = [json.loads(line) for line in out.splitlines()]
        assert [entry["version"] for entry in lines] == [start + 1, start] and lines[0]["reason"] == "raise rpm"
        code, out, _ = await _cli(capsys, "config", "diff", str(start), str(start + 1), "--url", base)
        assert json.loads(out.splitlines()[0])["path"] == "tenants[t].limits.rpm"
        code, out, _ = await _cli(capsys, "config", "rollback", str(start), "--url", base)
        assert code == 0 and gateway.snapshot.version == start + 2 and gateway.snapshot.config.tenants[0].limits.rpm is None
        code, out, err = await _cli(capsys, "config", "rollback", "99", "--url", base)
        assert code == 1 and "404" in err
        code, out, _ = await _cli(capsys, "canary", "status", "--url", base)
        assert code == 0 and out == ""
        code, _, err = await _cli(capsys, "canary", "pause", "m", "--url", base)
        assert code == 1 and "404" in err and "canary" in err
