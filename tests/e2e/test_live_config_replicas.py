"""Live config across three gateway processes that share PostgreSQL and Redis.

Each replica is ``python -m router serve`` with ``state.config: postgres``. The
versions live in a scratch database reached through a proxy the test can cut;
announcements go through a redis-server of the test's own, which it can stop;
each replica keeps its own SQLite ledger, so a new price is checked where it
lands: in the cost of a request. Changes go through replica 0's admin route
(two replicas' writers race for the 409) and every replica must serve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bench.fake_upstream import FakeUpstream
from router.auth import hash_api_key
from router.config_store_postgres import CHANNEL
from tests.contract.test_config_store import scratch_database
from tests.integration.gateway_server import free_port
from tests.integration.test_ledger_postgres_outage import TcpProxy

REPO = Path(__file__).resolve().parents[2]
REPLICAS = 3
RECONCILE_S = 1.0
RPM = 4
OPS_KEY = "sk-live-replicas-ops-0123456789"
KEYS = {"priced": "sk-live-replicas-priced-0123456789", "limited": "sk-live-replicas-limited-0123456789",
        "private": "sk-live-replicas-private-0123456789"}  # fmt: skip
EMAIL = "Write to ann@example.com please"
Json = dict[str, Any]


class RedisServer:
    """A redis-server of the test's own on a port kept across restarts; nothing is persisted."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = directory
        self._process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(self._dir)]  # fmt: skip
        with (self._dir / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    async def start(self) -> None:
        self._spawn()
        client = aioredis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(RedisError, OSError):
                        await client.ping()
                        return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self._process is not None:
            await _end(self._process)
            self._process = None

    async def subscribers(self) -> int:
        client = aioredis.from_url(self.url)
        try:
            return int(dict(await client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0))
        finally:
            await client.aclose()


@dataclass
class Replica:
    url: str
    ledger: Path
    log: Path
    process: subprocess.Popen[bytes]


@dataclass
class Answer:
    status: int
    version: str | None
    request_id: str | None
    retry_after: str | None
    body: Json


@dataclass
class Cluster:
    replicas: list[Replica]
    redis: RedisServer
    postgres: TcpProxy
    http: aiohttp.ClientSession

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """On failure, print the end of every replica's log (pytest shows it with the failure)."""
        try:
            yield
        except BaseException:
            for i, replica in enumerate(self.replicas):
                print(f"--- replica {i} ({replica.url}), end of log ---\n{replica.log.read_text(errors='replace')[-4000:]}")
            raise


def _config(upstream: str, dsn: str, redis_url: str, home: Path, port: int) -> Json:
    def tenant(name: str, **extra: Any) -> Json:
        return {"id": name, "keys": [{"id": f"{name}-key", "hash": hash_api_key(KEYS[name])}], **extra}

    return {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "info", "grace_period_s": 4},
        "deployments": [{"name": "d", "provider": "openai", "base_url": upstream, "model": "fake-model",
                         "price": {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000}}],
        "models": [{"alias": "m", "deployments": ["d"]}],
        "tenants": [
            {"id": "ops", "keys": [{"id": "ops", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:*"]}]},
            tenant("priced"),
            tenant("limited"),
            # Loaded at start, so that the change under test is the action alone.
            tenant("private", pii={"action": "redact", "entities": ["EMAIL_ADDRESS"]}),
        ],
        "state": {"config": "postgres", "postgres_dsn": dsn, "config_reconcile_s": RECONCILE_S, "redis_url": redis_url,
                  "counters": "redis", "ledger": "sqlite", "ledger_path": str(home / "ledger.sqlite"),
                  "ledger_spool_path": str(home / "spool")},
    }


def _launch(index: int, workdir: Path, upstream: str, dsn: str, redis_url: str) -> Replica:
    home = workdir / f"replica{index}"
    home.mkdir()
    port = free_port()
    path = home / "sluicegate.yaml"
    path.write_bytes(msgspec.yaml.encode(_config(upstream, dsn, redis_url, home, port)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log = home / "replica.log"
    with log.open("wb") as out:
        argv = [sys.executable, "-m", "router", "serve", "--config", str(path)]
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home)
    return Replica(f"http://127.0.0.1:{port}", home / "ledger.sqlite", log, process)


async def _ready(http: aiohttp.ClientSession, replica: Replica, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise AssertionError(f"{replica.url} exited with {replica.process.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{replica.url}/healthz") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{replica.url} did not start within {timeout_s:.0f} s")


async def _end(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """Stop a process without blocking the loop (the proxy it may be closing connections through runs here)."""
    if process.poll() is None:
        process.terminate()
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait()


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


@pytest.fixture(scope="module")
async def cluster(fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    workdir = tmp_path_factory.mktemp("live-replicas")
    redis = RedisServer(workdir)
    await redis.start()
    async with scratch_database() as dsn, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        target = urlsplit(dsn)
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
        await proxy.start()
        replicas = [_launch(i, workdir, fake_upstream.url, _via(dsn, proxy.port), redis.url) for i in range(REPLICAS)]
        cluster = Cluster(replicas, redis, proxy, http)
        try:
            with cluster.explained():
                await asyncio.gather(*(_ready(http, r) for r in replicas))
            yield cluster
        finally:
            await asyncio.gather(*(_end(r.process) for r in replicas))
            if proxy._server is not None:
                await proxy.stop()
            await redis.stop()


# --- the admin route and the chat route ------------------------------------------------


async def _current(c: Cluster, i: int) -> tuple[int, Json]:
    async with c.http.get(f"{c.replicas[i].url}/admin/v1/config", headers={"authorization": f"Bearer {OPS_KEY}"}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
        assert r.headers["etag"] == f'"{body["version"]}"'
        return int(body["version"]), dict(body["config"])


async def _put(c: Cluster, i: int, document: Json, if_match: int) -> tuple[int, Json, str | None]:
    headers = {"authorization": f"Bearer {OPS_KEY}", "if-match": f'"{if_match}"'}
    async with c.http.put(f"{c.replicas[i].url}/admin/v1/config", json={"config": document, "reason": "e2e"}, headers=headers) as r:
        return r.status, await r.json(), r.headers.get("retry-after")


async def _chat(c: Cluster, i: int, tenant: str, text: str = "hello") -> Answer:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    async with c.http.post(f"{c.replicas[i].url}/v1/chat/completions", json=body,
                           headers={"authorization": f"Bearer {KEYS[tenant]}"}) as r:  # fmt: skip
        h = r.headers
        return Answer(r.status, h.get("x-sluicegate-config-version"), h.get("x-request-id"), h.get("retry-after"), await r.json())


async def _wait_all(c: Cluster, version: int, within_s: float) -> None:
    """Every replica serves ``version`` (or newer) within ``within_s`` of now, as its admin route says."""
    deadline = time.monotonic() + within_s
    serving = [0] * len(c.replicas)
    while time.monotonic() < deadline:
        serving = [(await _current(c, i))[0] for i in range(len(c.replicas))]
        if min(serving) >= version:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"version {version} not served everywhere within {within_s} s: replicas serve {serving}")


async def _commit(c: Cluster, i: int, document: Json, version: int) -> int:
    status, body, _ = await _put(c, i, document, version)
    assert status == 200 and body["version"] == version + 1, body
    return version + 1


def _tenant(document: Json, name: str) -> Json:
    found: Json = next(t for t in document["tenants"] if t["id"] == name)
    return found


def _relabel(document: Json, label: str) -> Json:
    """A copy of ``document`` that differs in a name nothing depends on."""
    copy: Json = msgspec.json.decode(msgspec.json.encode(document))
    _tenant(copy, "ops")["name"] = label
    return copy


async def _ledger_row(replica: Replica, request_id: str, timeout_s: float = 5.0) -> tuple[int, int, int, int]:
    """(cost, prompt tokens, completion tokens, config version) of one request in the replica's ledger."""

    def read() -> tuple[int, int, int, int] | None:
        with contextlib.closing(sqlite3.connect(f"file:{replica.ledger}?mode=ro", uri=True, timeout=2)) as db:
            query = "SELECT cost, prompt_tokens, completion_tokens, config_version FROM ledger WHERE request_id = ?"
            row: tuple[int, int, int, int] | None = db.execute(query, (request_id,)).fetchone()
            return row

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.OperationalError):  # the file or table not written yet
            if (row := await asyncio.to_thread(read)) is not None:
                return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"request {request_id} is not in {replica.ledger} after {timeout_s} s")


# --- the scenarios ----------------------------------------------------------------------


async def _billed_at(c: Cluster, version: int, price: Json) -> None:
    for i, replica in enumerate(c.replicas):
        answer = await _chat(c, i, "priced")
        assert answer.status == 200 and answer.version == str(version), (i, answer)
        assert answer.request_id is not None
        cost, prompt, completion, row_version = await _ledger_row(replica, answer.request_id)
        assert prompt > 0 and completion > 0 and row_version == version, (i, row_version)
        assert cost == prompt * price["input_per_mtok"] + completion * price["output_per_mtok"], (i, cost, price)


async def test_a_new_price_is_served_and_billed_by_every_replica(cluster: Cluster) -> None:
    with cluster.explained():
        version, document = await _current(cluster, 0)
        old = dict(document["deployments"][0]["price"])
        await _billed_at(cluster, version, old)
        new = {**old, "input_per_mtok": old["input_per_mtok"] * 3 + 7, "output_per_mtok": old["output_per_mtok"] * 5 + 11}
        document["deployments"][0]["price"] = new
        version = await _commit(cluster, 0, document, version)
        await _wait_all(cluster, version, within_s=10)
        await _billed_at(cluster, version, new)


async def test_b_a_new_rate_limit_is_one_limit_shared_by_every_replica(cluster: Cluster) -> None:
    with cluster.explained():
        before = [(await _chat(cluster, i % REPLICAS, "limited")).status for i in range(RPM + 2)]
        assert before == [200] * (RPM + 2)  # no limit yet
        version, document = await _current(cluster, 0)
        _tenant(document, "limited")["limits"] = {"rpm": RPM}
        version = await _commit(cluster, 0, document, version)
        await _wait_all(cluster, version, within_s=10)
        # Windows are aligned to the minute: the requests below must fall in one.
        if (into := time.time() % 60) > 55:
            await asyncio.sleep(60.5 - into)
        admitted = [await _chat(cluster, i % REPLICAS, "limited") for i in range(RPM)]
        assert [(a.status, a.version) for a in admitted] == [(200, str(version))] * RPM
        for i in range(REPLICAS):
            refused = await _chat(cluster, i, "limited")
            assert refused.status == 429 and refused.body["error"]["code"] == "rate_limit_exceeded", (i, refused)
            assert refused.retry_after is not None and int(refused.retry_after) >= 1


async def test_c_a_pii_block_is_enforced_by_every_replica(cluster: Cluster) -> None:
    with cluster.explained():
        for i in range(REPLICAS):
            assert (await _chat(cluster, i, "private", EMAIL)).status == 200  # redacted, not refused
        version, document = await _current(cluster, 0)
        _tenant(document, "private")["pii"] = {"action": "block", "entities": ["EMAIL_ADDRESS"]}
        version = await _commit(cluster, 0, document, version)
        await _wait_all(cluster, version, within_s=10)
        for i in range(REPLICAS):
            blocked = await _chat(cluster, i, "private", EMAIL)
            assert blocked.status == 400 and blocked.body["error"]["code"] == "pii_blocked", (i, blocked)
            clean = await _chat(cluster, i, "private")
            assert clean.status == 200 and clean.version == str(version), (i, clean)


async def test_d_a_version_whose_announcement_is_lost_arrives_by_reconcile(cluster: Cluster) -> None:
    with cluster.explained():
        version, document = await _current(cluster, 0)
        await cluster.redis.stop()
        try:
            # PostgreSQL is up: the write succeeds; no replica can hear of it.
            version = await _commit(cluster, 0, _relabel(document, "committed while Redis was down"), version)
            await _wait_all(cluster, version, within_s=RECONCILE_S + 2.0)
        finally:
            await cluster.redis.start()
        deadline = time.monotonic() + 10  # the subscribers' reconnect backoff is at most 5 s
        while (listening := await cluster.redis.subscribers()) < REPLICAS and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert listening == REPLICAS
        # Announced again: each version reaches every replica well inside one reconcile interval,
        # which by the reconcile alone would happen for all of them ((1/2)^6) about once in 64 runs.
        for n in range(3):
            version, document = await _current(cluster, n % REPLICAS)
            version = await _commit(cluster, n % REPLICAS, _relabel(document, f"announced {n}"), version)
            await _wait_all(cluster, version, within_s=RECONCILE_S / 2)


async def test_e_postgres_unreachable_refuses_writes_and_every_replica_keeps_serving(cluster: Cluster) -> None:
    with cluster.explained():
        version, document = await _current(cluster, 0)
        await _wait_all(cluster, version, within_s=5)  # the version every replica must keep serving
        await cluster.postgres.stop()
        try:
            started = time.monotonic()
            status, body, retry_after = await _put(cluster, 0, _relabel(document, "never written"), version)
            assert status == 503 and body["error"]["code"] == "config_store_unavailable", body
            assert retry_after is not None and time.monotonic() - started < 8
            await asyncio.sleep(RECONCILE_S * 1.5)  # a reconcile or two fail meanwhile
            for i in range(REPLICAS):
                answer = await _chat(cluster, i, "priced")
                assert answer.status == 200 and answer.version == str(version), (i, answer)
        finally:
            await cluster.postgres.start()
        deadline = time.monotonic() + 10
        while (result := await _put(cluster, 0, _relabel(document, "written once it is back"), version))[0] == 503:
            assert time.monotonic() < deadline, "writes did not recover once PostgreSQL was back"
            await asyncio.sleep(0.2)
        assert result[0] == 200 and result[1]["version"] == version + 1, result
        await _wait_all(cluster, version + 1, within_s=5)


async def test_f_two_writers_on_two_replicas_with_the_same_if_match_one_wins(cluster: Cluster) -> None:
    with cluster.explained():
        version, document = await _current(cluster, 0)
        labels = ["writer on replica 1", "writer on replica 2"]
        results = await asyncio.gather(*(_put(cluster, i + 1, _relabel(document, labels[i]), version) for i in range(2)))
        assert sorted(status for status, _, _ in results) == [200, 409], results
        winner = 0 if results[0][0] == 200 else 1
        assert results[1 - winner][1]["error"]["code"] == "version_conflict"
        await _wait_all(cluster, version + 1, within_s=5)
        for i in range(REPLICAS):
            served, live = await _current(cluster, i)
            assert served == version + 1 and _tenant(live, "ops")["name"] == labels[winner], (i, served)
        async with cluster.http.get(f"{cluster.replicas[0].url}/admin/v1/config/versions/{version + 2}",
                                    headers={"authorization": f"Bearer {OPS_KEY}"}) as r:  # fmt: skip
            assert r.status == 404  # the loser wrote nothing
