"""Two gateway processes sharing PostgreSQL and Redis: a revocation on one reaches both within a second.

Everything goes through the public surface: the operator commands create the
schema and the first ops key, the admin API creates and revokes keys, and the
OpenAI surface (/v1/models) says whether a key still works. Both replicas cache
keys for 60 s, so only the pub/sub message can make them refuse this fast.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as redis

from tests.integration.gateway_server import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEADLINE_S = 1.0


@dataclass
class Cluster:
    config: Path
    replicas: list[str]
    ops_key: str


async def _reachable() -> bool:
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=3)
        await conn.close()
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            await client.ping()
        finally:
            await client.aclose()
    except (OSError, asyncpg.PostgresError, redis.RedisError):
        return False
    return True


def _cli(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "router", *args, "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    if not asyncio.run(_reachable()):
        pytest.skip("PostgreSQL and Redis are needed")
    name = f"sg_replicas_{secrets.token_hex(6)}"
    _psql(f"CREATE DATABASE {name}")
    try:
        yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _psql(statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def cluster(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    config = tmp_path_factory.mktemp("replicas") / "sluicegate.yaml"
    config.write_text(
        f"server: {{log_level: warning, grace_period_s: 1}}\n"
        f"state: {{tenants: postgres, postgres_dsn: '{database}', redis_url: '{REDIS_URL}'}}\n"
    )
    assert "tenancy/1001" in _cli(config, "db", "migrate")
    ops = f"ops-{secrets.token_hex(3)}"
    _cli(config, "tenants", "create", ops, "--name", "Operators")
    printed = _cli(config, "keys", "create", "--tenant", ops, "--scope", "ops:*")
    ops_key = next(line.split()[1] for line in printed.splitlines() if line.startswith("key:"))
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    try:
        replicas = [f"http://127.0.0.1:{port}" for port in ports]
        asyncio.run(_wait_ready(replicas, procs))
        yield Cluster(config, replicas, ops_key)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _wait_ready(replicas: list[str], procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        for base, proc in zip(replicas, procs, strict=True):
            while True:
                assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
                assert time.monotonic() < deadline, f"{base} did not become ready"
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _status(http: aiohttp.ClientSession, base: str, key: str) -> int:
    async with http.get(f"{base}/v1/models", headers={"authorization": f"Bearer {key}"}) as resp:
        await resp.read()
        return resp.status


async def _admin(http: aiohttp.ClientSession, cluster: Cluster, method: str, path: str, body: object = None) -> dict:
    headers = {"authorization": f"Bearer {cluster.ops_key}"}
    async with http.request(method, f"{cluster.replicas[0]}/admin/v1{path}", json=body, headers=headers) as resp:
        payload = await resp.json(content_type=None)
        assert resp.status in (200, 201), payload
        return payload


async def _refused_everywhere_within(http: aiohttp.ClientSession, cluster: Cluster, key: str, started: float) -> float:
    """Poll every replica until each answers 401; fail at the deadline. Returns the time it took."""
    pending = set(cluster.replicas)
    while pending:
        for base in list(pending):
            if await _status(http, base, key) == 401:
                pending.discard(base)
        elapsed = time.monotonic() - started
        assert elapsed <= DEADLINE_S or not pending, f"still accepted after {elapsed:.2f}s by {sorted(pending)}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _tenant_with_key(http: aiohttp.ClientSession, cluster: Cluster) -> tuple[str, str, str]:
    tenant = f"t-{secrets.token_hex(4)}"
    await _admin(http, cluster, "POST", "/tenants", {"id": tenant})
    created = await _admin(http, cluster, "POST", f"/tenants/{tenant}/keys", {"scopes": []})
    return tenant, created["id"], created["key"]


async def test_revoked_key_is_refused_by_both_replicas_within_a_second(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    tenant, key_id, key = await _tenant_with_key(http, cluster)
    for _ in range(3):  # cached on both replicas now
        assert [await _status(http, base, key) for base in cluster.replicas] == [200, 200]
    started = time.monotonic()
    revoked = await _admin(http, cluster, "DELETE", f"/tenants/{tenant}/keys/{key_id}")
    assert revoked["revoked"] is True
    assert await _refused_everywhere_within(http, cluster, key, started) <= DEADLINE_S
    await asyncio.sleep(0.2)
    assert [await _status(http, base, key) for base in cluster.replicas] == [401, 401]


async def test_disabled_tenant_is_refused_by_both_replicas_within_a_second(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    tenant, _, key = await _tenant_with_key(http, cluster)
    _, _, bystander = await _tenant_with_key(http, cluster)
    assert [await _status(http, base, k) for base in cluster.replicas for k in (key, bystander)] == [200] * 4
    started = time.monotonic()
    await _admin(http, cluster, "POST", f"/tenants/{tenant}/disable")
    assert await _refused_everywhere_within(http, cluster, key, started) <= DEADLINE_S
    assert [await _status(http, base, bystander) for base in cluster.replicas] == [200, 200]


async def test_cli_revocation_reaches_running_replicas(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    tenant, key_id, key = await _tenant_with_key(http, cluster)
    assert [await _status(http, base, key) for base in cluster.replicas] == [200, 200]
    await asyncio.to_thread(_cli, cluster.config, "keys", "revoke", "--tenant", tenant, "--key", key_id)
    started = time.monotonic()
    assert await _refused_everywhere_within(http, cluster, key, started) <= DEADLINE_S


async def test_revoking_a_key_spares_another_tenants_key_of_the_same_id(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    key_id = f"shared-{secrets.token_hex(3)}"
    keys = {}
    for _ in range(2):
        tenant = f"t-{secrets.token_hex(4)}"
        await _admin(http, cluster, "POST", "/tenants", {"id": tenant})
        keys[tenant] = (await _admin(http, cluster, "POST", f"/tenants/{tenant}/keys", {"id": key_id}))["key"]
    (revoked, key), (other, bystander) = keys.items()
    assert [await _status(http, base, k) for base in cluster.replicas for k in (key, bystander)] == [200] * 4
    started = time.monotonic()
    await _admin(http, cluster, "DELETE", f"/tenants/{revoked}/keys/{key_id}")
    assert await _refused_everywhere_within(http, cluster, key, started) <= DEADLINE_S
    assert [await _status(http, base, bystander) for base in cluster.replicas] == [200, 200]
    listed = await _admin(http, cluster, "GET", f"/tenants/{other}/keys")
    assert [(k["id"], k["revoked"]) for k in listed["data"]] == [(key_id, False)]  # not just still cached
