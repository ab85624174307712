"""How long the admin console's pages take to load against a large ledger.

``python -m bench.console_usage [--rows 1000000] [--repeat 5] [--store sqlite|postgres] [--dsn postgresql://postgres@127.0.0.1:5432/test]``

Fills a fresh ledger (a temporary SQLite file, or a throwaway PostgreSQL
database) with ``--rows`` synthetic rows through the store's own batch path
(``bench.usage_rollups``: 50 tenants of very different sizes over the 30 days
before 2026-11-01, rollups kept as written), starts the real gateway on it as a
subprocess, signs in through the console's login form with an HTTP client
(cookies kept) as an operator and as tenant-00's admin, and loads each page that
reads the ledger: once cold (the first load since the gateway started), then
``--repeat`` times more, round-robin, for the median and the maximum. Every
answer must be a 200; anything else stops the benchmark. It ends by signing out
with the session's CSRF token.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec

from bench.processes import Server, free_port
from bench.usage_rollups import DAYS, END, fill, opened_store
from budgets.ledger_postgres import PostgresStore
from budgets.ledger_row import LedgerStore
from budgets.ledger_sqlite import SQLiteStore
from budgets.ledger_usage import reads_rollup
from budgets.report import build_query
from router.auth import hash_api_key

TENANTS = [f"tenant-{i:02d}" for i in range(50)]  # the tenants bench.usage_rollups writes rows for
BIG, SMALL = TENANTS[0], TENANTS[-1]  # the largest tenant and the smallest
START = END - timedelta(days=DAYS)
REQUEST_TIMEOUT_S = 300.0
OVERVIEW_NOTE = "*"
NOT_LEDGER_NOTE = "+"


@dataclass(frozen=True)
class Page:
    label: str
    who: str  # "ops" or "admin": which signed-in client loads it
    path: str
    reads: str  # what its ledger queries read: the rollups, raw rows, or no ledger at all


@dataclass
class Timing:
    cold: float = 0.0
    warm: list[float] = field(default_factory=list)
    size: int = 0
    status: int = 0


def pages() -> list[Page]:
    """The console's pages that read the ledger (and the budgets page), with ranges that cover the synthetic rows."""
    span = {"from": START.strftime("%Y-%m-%dT%H:%M:%SZ"), "to": END.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def usage(label: str, who: str, tenant: str, group_by: str = "day,model", csv: bool = False) -> Page:
        path = f"/ui/tenants/{tenant}/usage" + (f".csv?{urlencode({**span, 'group_by': group_by})}" if csv else f"?{urlencode(span)}")
        query = build_query(span["from"], span["to"], group_by, tenant)  # the page's own query
        return Page(label, who, path, "rollups" if reads_rollup(query) else "raw rows")

    return [
        Page("overview: today, this month, 24 h", "ops", "/ui", f"rollups {OVERVIEW_NOTE}"),
        usage(f"usage {BIG}, 30 d by day + by alias", "ops", BIG),
        usage(f"usage {SMALL}, 30 d by day + by alias", "ops", SMALL),
        usage(f"CSV {BIG}, 30 d by day,alias", "ops", BIG, "day,model", csv=True),
        usage(f"CSV {BIG}, 30 d by day", "ops", BIG, "day", csv=True),
        usage(f"CSV {BIG}, 30 d by alias", "ops", BIG, "model", csv=True),
        usage(f"CSV {BIG}, 30 d by key", "ops", BIG, "key", csv=True),
        usage(f"CSV {BIG}, 30 d by hour", "ops", BIG, "hour", csv=True),
        Page(f"tenant {BIG}: budgets, keys", "ops", f"/ui/tenants/{BIG}", f"none {NOT_LEDGER_NOTE}"),
        usage(f"tenant admin: usage {BIG}, 30 d", "admin", BIG),
        usage(f"tenant admin: CSV {BIG}, 30 d by day,alias", "admin", BIG, "day,model", csv=True),
        Page(f"tenant admin: tenant {BIG}", "admin", f"/ui/tenants/{BIG}", f"none {NOT_LEDGER_NOTE}"),
    ]


def gateway_config(work: Path, store: LedgerStore, keys: dict[str, str]) -> dict[str, Any]:
    """An operator tenant, the 50 tenants of the rows (tenant-00 with an admin key and budgets), the ledger just filled."""

    def key(kid: str, raw: str, scopes: list[str]) -> dict[str, Any]:
        return {"id": kid, "hash": hash_api_key(raw), "scopes": scopes}

    tenants: list[dict[str, Any]] = [{"id": "ops", "name": "Operations", "keys": [key("ops-admin", keys["ops"], ["ops:*"])]}]
    tenants += [{"id": t, "name": t.replace("-", " ").title()} for t in TENANTS]
    tenants[1]["keys"] = [key(f"{BIG}-admin", keys["admin"], ["tenant:read", "tenant:write"])]
    tenants[1]["budgets"] = [
        {"kind": "money", "period": "monthly", "limit": 50_000_000_000},
        {"kind": "tokens", "period": "daily", "limit": 100_000_000},
    ]
    state: dict[str, Any] = {"ledger_spool_path": str(work / "spool")}
    # The store's location: bench.usage_rollups.opened_store made it, and only the store knows it.
    if isinstance(store, SQLiteStore):
        state["ledger_path"] = store._path
    elif isinstance(store, PostgresStore):
        secret = work / "ledger-dsn"  # by reference, never in the config file
        secret.write_text(store._dsn)
        secret.chmod(0o600)
        state.update(ledger="postgres", postgres_dsn={"file": str(secret)}, ledger_query_timeout_s=REQUEST_TIMEOUT_S)
    else:
        raise TypeError(f"no gateway config for a {type(store).__name__}")
    return {"server": {"host": "127.0.0.1", "log_level": "warning"}, "tenants": tenants, "state": state}


async def wait_ready(server: Server, url: str, timeout_s: float = 120.0) -> None:
    assert server.process is not None
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {server.process.returncode}; its log ends:\n{server.log_tail()}")
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway did not answer /healthz within {timeout_s:.0f}s; log:\n{server.log_tail()}")


async def sign_in(url: str, key: str) -> httpx.AsyncClient:
    """A client with a console session, opened through the real login form (the session cookie kept)."""
    client = httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, follow_redirects=False)
    form = await client.get("/ui/login")
    if form.status_code != 200 or 'name="key"' not in form.text:
        raise RuntimeError(f"GET /ui/login answered {form.status_code} without the sign-in form")
    answer = await client.post("/ui/login", data={"key": key}, headers={"origin": url})
    if answer.status_code != 303 or "sg_console" not in client.cookies:
        raise RuntimeError(f"sign-in refused: POST /ui/login answered {answer.status_code}")
    return client


async def load(client: httpx.AsyncClient, page: Page) -> tuple[float, httpx.Response]:
    began = time.perf_counter()
    answer = await client.get(page.path)
    elapsed = time.perf_counter() - began
    if answer.status_code != 200:
        raise RuntimeError(f"{page.label}: GET {page.path} answered {answer.status_code}, not 200: {answer.text[:300]!r}")
    if page.path.split("?")[0].endswith(".csv") and len(answer.text.splitlines()) < 2:
        raise RuntimeError(f"{page.label}: the CSV has no rows; the range misses the ledger's rows")
    return elapsed, answer


async def sign_out(client: httpx.AsyncClient, csrf: str, url: str) -> None:
    """Sign out with the session's CSRF token; the session must be gone afterwards."""
    answer = await client.post("/ui/logout", data={"csrf": csrf}, headers={"origin": url})
    if answer.status_code != 303 or answer.headers.get("location") != "/ui/login":
        raise RuntimeError(f"sign-out refused: POST /ui/logout answered {answer.status_code}")
    after = await client.get("/ui")
    if after.status_code != 303 or after.headers.get("location") != "/ui/login":
        raise RuntimeError(f"the session outlived sign-out: GET /ui answered {after.status_code}")
    await client.aclose()


async def measure(url: str, keys: dict[str, str], repeat: int) -> dict[Page, Timing]:
    """The cold load of each page, then ``repeat`` rounds over all of them."""
    clients = {who: await sign_in(url, key) for who, key in keys.items()}
    csrf: dict[str, str] = {}
    timings = {page: Timing() for page in pages()}
    for rnd in range(repeat + 1):
        for page, timing in timings.items():
            elapsed, answer = await load(clients[page.who], page)
            if rnd == 0:
                timing.cold = elapsed
            else:
                timing.warm.append(elapsed)
            timing.size, timing.status = len(answer.content), answer.status_code
            found = re.search(r'name="csrf" value="([^"]+)"', answer.text)
            if found is not None:
                csrf[page.who] = found.group(1)
    for who, client in clients.items():
        if who not in csrf:
            raise RuntimeError(f"no page carried a CSRF token for the {who} session")
        await sign_out(client, csrf[who], url)
    return timings


def report(timings: dict[Page, Timing], now: datetime) -> None:
    print(f"{'page':<46} {'cold ms':>9} {'median ms':>10} {'max ms':>9} {'bytes':>9} {'HTTP':>5}  reads")
    for page, t in timings.items():
        median, worst = statistics.median(t.warm) * 1e3, max(t.warm) * 1e3
        print(f"{page.label:<46} {t.cold * 1e3:>9.1f} {median:>10.1f} {worst:>9.1f} {t.size:>9,} {t.status:>5}  {page.reads}")
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    overlap = "overlaps" if START < now and month < END else "does not overlap"
    print(f"{OVERVIEW_NOTE} the overview reads the rollups for the current period only (today, {now:%Y-%m}, the last 24 h, "
          f"relative to now); it {overlap} the synthetic rows' {START:%Y-%m-%d}..{END:%Y-%m-%d}")  # fmt: skip
    print(f"{NOT_LEDGER_NOTE} budget counters, keys and the audit log; no ledger query")
    if any(page.reads == "raw rows" for page in timings):
        print("raw rows: the rollups have no column for that grouping, so the query reads the tenant's rows in the range")


async def run(kind: str, rows: int, dsn: str, repeat: int) -> None:
    async with opened_store(kind, dsn) as store:
        print(f"filling a fresh {kind} ledger with {rows:,} rows ...", file=sys.stderr)
        rate = await fill(store, rows)
        print(f"  filled at {rate:,.0f} rows/s", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="console-usage-") as tmp:
            work = Path(tmp)
            keys = {who: f"sk-bench-{who}-{secrets.token_hex(16)}" for who in ("ops", "admin")}
            config = work / "sluicegate.yaml"
            config.write_bytes(msgspec.yaml.encode(gateway_config(work, store, keys)))
            port = free_port()
            argv = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
            gateway = Server("sluicegate", argv, work / "gateway.log", work)
            url = f"http://127.0.0.1:{port}"
            try:
                gateway.start()
                await wait_ready(gateway, url)
                print(f"gateway up on {url}; loading {len(pages())} pages, cold then {repeat} rounds ...", file=sys.stderr)
                timings = await measure(url, keys, repeat)
            finally:
                gateway.stop()
        print(f"console pages on a {kind} ledger of {rows:,} rows ({len(TENANTS)} tenants, {START:%Y-%m-%d}..{END:%Y-%m-%d}; "
              f"filled at {rate:,.0f} rows/s); cold = first load, then median and max of {repeat}")  # fmt: skip
        report(timings, datetime.now(UTC))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the admin console's pages against a large ledger.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="loads of each page after its cold load")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:5432/test", help="an admin DSN; a throwaway database is made beside it"
    )
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be at least 1")
    asyncio.run(run(args.store, args.rows, args.dsn, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
