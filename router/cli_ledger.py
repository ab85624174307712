"""`sluicegate ledger report`: usage from the ledger the config selects, as table, CSV or JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys

from budgets.report import ReportError, build_query, render
from core.config import ConfigError
from core.config_check import load_config
from router.state import open_ledger


def add_ledger_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ledger = sub.add_parser("ledger", help="cost ledger reports")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    report = ledger_sub.add_parser("report", help="usage and cost, grouped")
    report.add_argument("--config", required=True, help="the gateway's config (selects the ledger)")
    report.add_argument("--from", dest="start", help="start, ISO 8601 (default: 30 days ago)")
    report.add_argument("--to", dest="end", help="end, ISO 8601, exclusive (default: now)")
    report.add_argument("--group-by", default="tenant", help="comma-separated: tenant, model, deployment, key, day, hour, provider, status")
    report.add_argument("--tenant", help="only this tenant")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")


def run_ledger_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        query = build_query(args.start, args.end, args.group_by, args.tenant)
    except (ConfigError, ReportError) as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 2
    ledger = open_ledger(config)
    if ledger is None:
        print("sluicegate: the ledger is turned off in this config (state.ledger: off)", file=sys.stderr)
        return 2

    async def fetch() -> str:
        await ledger.start()
        try:
            return render(await ledger.usage(query), list(query.group_by), args.format)
        finally:
            await ledger.close()

    sys.stdout.write(asyncio.run(fetch()))
    return 0
