"""Stopping a gateway the way Kubernetes does while its PostgreSQL ledger is a black hole.

The gateway runs as a subprocess with the ledger behind a proxy that turns
silent (connections accepted, never answered, the pool's open connection
included). Requests answered 200 in that state must each leave a ledger row:
in the spool, or in the database once the spool is replayed.

- SIGTERM: the process exits 0 within the grace period, so the SIGKILL that
  follows it is never needed, and every answered request's row is kept.
- SIGKILL with no warning (the grace period ran out, the node died): every row
  answered more than the write deadline before is already in the spool.

Both use the default ledger deadlines, as a deployment would.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from budgets.ledger_postgres import PostgresLedger
from budgets.ledger_row import decode_spooled
from budgets.migrate import migrate
from tests.contract.test_ledger import ADMIN_DSN, database_dsn
from tests.e2e.conftest import API_KEY, Process, gateway_config, serve
from tests.fakes.blackhole import BlackHole

GRACE_S = 12
WRITE_DEADLINE_S = 5.0  # state.ledger_timeout_s, by default
ANSWERED_WHILE_SILENT = 60


@dataclass
class Setup:
    database: str
    hole: BlackHole
    workdir: Path

    @property
    def direct_dsn(self) -> str:
        return database_dsn(self.database)

    @property
    def spool(self) -> Path:
        return self.workdir / "ledger.spool"


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable")
    database = f"sg_sigterm_{secrets.token_hex(5)}"
    await admin.execute(f"CREATE DATABASE {database}")
    host, _, port = ADMIN_DSN.split("@", 1)[1].split("/", 1)[0].partition(":")
    hole = BlackHole(host, int(port or 5432))
    hole.start()
    try:
        ready = Setup(database, hole, tmp_path)
        await migrate(ready.direct_dsn)
        yield ready
    finally:
        hole.close()
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()


@pytest.fixture
def launch(setup: Setup, fake_server: Process) -> Iterator[Any]:
    started: list[Process] = []

    def start() -> Process:
        settings = gateway_config(fake_server.url + "/v1", grace_period_s=GRACE_S)
        settings["state"] = {
            "ledger": "postgres",
            "postgres_dsn": f"postgresql://postgres@{setup.hole.dsn_host}/{setup.database}",
            "ledger_spool_path": str(setup.spool),
        }
        proc = serve(settings, setup.workdir)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


def _answered(gateway: Process, count: int) -> list[str]:
    """Send ``count`` chat requests; the request ids of those answered 200 (all of them, asserted)."""
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {API_KEY}"}
    ids = []
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10.0) as http:
        for _ in range(count):
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            ids.append(response.headers["x-request-id"])
    return ids


def _spooled(spool: Path) -> list[str]:
    ids = []
    for path in (spool.with_name(spool.name + ".replaying"), spool):
        if path.exists():
            ids += [decode_spooled(line).request_id for line in path.read_bytes().splitlines() if line.strip()]
    return ids


async def _stored(setup: Setup) -> list[str]:
    conn = await asyncpg.connect(setup.direct_dsn)
    try:
        return [r[0] for r in await conn.fetch("SELECT request_id FROM ledger")]
    finally:
        await conn.close()


async def _wait_stored(setup: Setup, ids: list[str], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not set(ids) <= set(await _stored(setup)):
        assert time.monotonic() < deadline, "rows never reached the database while it answered"
        await asyncio.sleep(0.1)


async def _answered_then_silent(setup: Setup, gateway: Process) -> tuple[list[str], list[str]]:
    """Rows written while the database answers (so the pool holds a connection), then more once it is silent."""
    before = _answered(gateway, 10)
    await _wait_stored(setup, before)
    setup.hole.swallow()
    return before, _answered(gateway, ANSWERED_WHILE_SILENT)


async def _replayed(setup: Setup) -> list[str]:
    """Start a ledger on the answering database over the gateway's spool, as its next run would."""
    ledger = PostgresLedger(setup.direct_dsn, str(setup.spool))
    await ledger.start()
    await ledger.flush()
    await ledger.close()
    return await _stored(setup)


async def test_sigterm_exits_within_the_grace_period_and_keeps_every_answered_row(setup: Setup, launch: Any) -> None:
    gateway = launch()
    before, during = await _answered_then_silent(setup, gateway)
    await asyncio.sleep(0.5)  # the ledger's writer is now waiting on the silent server

    signalled = time.monotonic()
    gateway.popen.send_signal(signal.SIGTERM)
    try:
        code = gateway.popen.wait(GRACE_S + 10)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - signalled
    assert code == 0 and took < GRACE_S, f"exit {code} after {took:.1f}s (grace {GRACE_S}s):\n{gateway.output()[-3000:]}"

    kept = set(_spooled(setup.spool)) | set(await _stored(setup))
    assert set(before + during) <= kept, f"{len(set(before + during) - kept)} answered requests have no row"
    setup.hole.forward()
    stored = await _replayed(setup)
    assert sorted(stored) == sorted(before + during)  # each exactly once


async def test_sigkill_loses_no_row_answered_before_the_write_deadline(setup: Setup, launch: Any) -> None:
    gateway = launch()
    before, during = await _answered_then_silent(setup, gateway)
    answered_at = time.monotonic()
    # Spooled once the write to the silent server passes its deadline; nothing waits for a SIGTERM.
    while not set(during) <= set(_spooled(setup.spool)):
        waited = time.monotonic() - answered_at
        assert waited < WRITE_DEADLINE_S + 3, f"{len(set(during) - set(_spooled(setup.spool)))} rows still only in memory"
        await asyncio.sleep(0.1)
    gateway.popen.kill()
    gateway.popen.wait(10)

    assert set(during) <= set(_spooled(setup.spool))
    setup.hole.forward()
    assert sorted(await _replayed(setup)) == sorted(before + during)
