"""Operator commands: `db migrate`, `tenants ...`, `keys create|revoke`, `audit list`.

They act on the store the config selects. The config-file store lives in one
process's memory, so changing it from a command that then exits would change
nothing: with it only the listing commands run (edit the file instead).

Hook into the main parser with ``add_admin_commands(subparsers, keys_subparsers)``
and dispatch with ``run_admin_command(args)`` when ``is_admin_command(args)``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from core.config import Config, ConfigError
from core.config_check import load_config
from core.errors import GatewayError
from router.tenant_records import KeyCreate, TenantCreate, TenantStore, TenantUpdate
from router.tenants import open_tenant_store

ACTOR = "cli"
_PRIORITIES = ["critical", "high", "standard", "low"]
Handler = Callable[[argparse.Namespace, Config], int]


def is_admin_command(args: argparse.Namespace) -> bool:
    return getattr(args, "admin_handler", None) is not None


def add_admin_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    keys_subparsers: argparse._SubParsersAction[argparse.ArgumentParser] | None = None,
) -> None:
    """Add the commands; ``keys_subparsers`` is an existing `keys` group to extend, if any."""
    db = subparsers.add_parser("db", help="database tools").add_subparsers(dest="db_command", required=True)
    _command(db, "migrate", "apply pending PostgreSQL migrations (ledger and tenants)", _migrate)

    tenants = subparsers.add_parser("tenants", help="manage tenants").add_subparsers(dest="tenants_command", required=True)
    _command(tenants, "list", "list tenants", _tenants_list)
    create = _command(tenants, "create", "create a tenant", _tenants_create)
    create.add_argument("id")
    _tenant_options(create)
    update = _command(tenants, "update", "change a tenant", _tenants_update)
    update.add_argument("id")
    _tenant_options(update)
    update.add_argument("--enable", action="store_true", help="enable a disabled tenant")
    _command(tenants, "disable", "disable a tenant: its keys stop working", _tenants_disable).add_argument("id")

    if keys_subparsers is None:
        keys_subparsers = subparsers.add_parser("keys", help="API key tools").add_subparsers(dest="keys_command", required=True)
    key_create = _command(keys_subparsers, "create", "create a key for a tenant: prints it once", _keys_create)
    key_create.add_argument("--tenant", required=True)
    key_create.add_argument("--id", help="key id, unique within the tenant (default: generated)")
    key_create.add_argument("--scope", action="append", default=[], help="a scope to grant (repeatable)")
    key_create.add_argument("--expires", help="expiry as ISO 8601, e.g. 2030-01-31T00:00:00Z")
    key_create.add_argument("--priority", choices=_PRIORITIES)
    key_revoke = _command(keys_subparsers, "revoke", "revoke a key on every replica", _keys_revoke)
    key_revoke.add_argument("--tenant", required=True)
    key_revoke.add_argument("--key", required=True, help="the key's id within --tenant")

    audit = subparsers.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    audit_list = _command(audit, "list", "newest entries first, one JSON object per line", _audit_list)
    audit_list.add_argument("--tenant")
    audit_list.add_argument("--limit", type=int, default=100)


def _command(group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, handler: Handler) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help)
    parser.add_argument("--config", required=True, help="YAML or TOML config file")
    parser.set_defaults(admin_handler=handler)
    return parser


def _tenant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name")
    parser.add_argument("--priority", choices=_PRIORITIES)
    parser.add_argument("--weight", type=int)
    parser.add_argument("--rpm", type=int)
    parser.add_argument("--tpm", type=int)
    parser.add_argument("--max-concurrent", type=int)
    parser.add_argument(
        "--budget", action="append", help="KIND:PERIOD:LIMIT[:soft], e.g. money:monthly:50000000 (repeatable; replaces all)"
    )


def run_admin_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 2
    handler: Handler = args.admin_handler
    try:
        return handler(args, config)
    except (ConfigError, msgspec.ValidationError, ValueError) as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"sluicegate: {exc.message}", file=sys.stderr)
        return 1


def _with_store(config: Config, work: Callable[[TenantStore], Awaitable[int]]) -> int:
    pepper = config.auth.key_pepper.resolve().encode() if config.auth.key_pepper is not None else b""

    async def run() -> int:
        store = open_tenant_store(config, pepper, listen=False)
        await store.start()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _mutable(config: Config) -> None:
    if config.state.tenants == "config":
        raise ConfigError(
            "tenants and keys come from the config file here (`state.tenants: config`): edit the file, "
            "or select `state.tenants: postgres` to manage them with these commands"
        )


def _print(value: object) -> None:
    print(msgspec.json.encode(value).decode())


def _migrate(args: argparse.Namespace, config: Config) -> int:
    from core.migrate import migrate
    from router.migrate import ALL_SOURCES

    dsn = config.state.dsn()
    if dsn is None:
        raise ConfigError(f"{args.config}: key `state.postgres_dsn` is not set: nothing to migrate")
    applied = asyncio.run(migrate(dsn, ALL_SOURCES))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none'}")
    return 0


def _tenants_list(args: argparse.Namespace, config: Config) -> int:
    async def work(store: TenantStore) -> int:
        for tenant in await store.list_tenants():
            _print(tenant)
        return 0

    return _with_store(config, work)


def _tenant_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {k: getattr(args, k) for k in ("name", "priority", "weight") if getattr(args, k) is not None}
    if args.budget is not None:
        fields["budgets"] = [_budget(b) for b in args.budget]
    return fields


def _limits(args: argparse.Namespace) -> dict[str, int]:
    given = {"rpm": args.rpm, "tpm": args.tpm, "max_concurrent": args.max_concurrent}
    return {k: v for k, v in given.items() if v is not None}


def _budget(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "soft") or not parts[2].isdigit():
        raise ValueError(f"--budget {text!r}: expected KIND:PERIOD:LIMIT[:soft]")
    return {"kind": parts[0], "period": parts[1], "limit": int(parts[2]), "hard": len(parts) == 3}


def _tenants_create(args: argparse.Namespace, config: Config) -> int:
    _mutable(config)
    spec = msgspec.convert({"id": args.id, **_tenant_fields(args), "limits": _limits(args)}, TenantCreate)

    async def work(store: TenantStore) -> int:
        _print(await store.create_tenant(spec, ACTOR))
        return 0

    return _with_store(config, work)


def _tenants_update(args: argparse.Namespace, config: Config) -> int:
    _mutable(config)
    fields = _tenant_fields(args)
    if args.enable:
        fields["disabled"] = False

    async def work(store: TenantStore) -> int:
        limits = _limits(args)
        if limits:
            # Flags change the limits they name; the others keep their value.
            current = msgspec.to_builtins((await store.get_tenant(args.id)).limits)
            fields["limits"] = {**current, **limits}
        if not fields:
            raise ValueError("nothing to change: give at least one option")
        _print(await store.update_tenant(args.id, msgspec.convert(fields, TenantUpdate), ACTOR))
        return 0

    return _with_store(config, work)


def _tenants_disable(args: argparse.Namespace, config: Config) -> int:
    _mutable(config)

    async def work(store: TenantStore) -> int:
        _print(await store.disable_tenant(args.id, ACTOR))
        return 0

    return _with_store(config, work)


def _keys_create(args: argparse.Namespace, config: Config) -> int:
    _mutable(config)
    raw = {"id": args.id, "scopes": args.scope, "expires_at": args.expires, "priority": args.priority}
    spec = msgspec.convert({k: v for k, v in raw.items() if v is not None}, KeyCreate)

    async def work(store: TenantStore) -> int:
        created = await store.create_key(args.tenant, spec, ACTOR)
        print(f"key:    {created.key}\nid:     {created.record.id}\ntenant: {created.record.tenant}")
        print("The key is shown once; store it now.")
        return 0

    return _with_store(config, work)


def _keys_revoke(args: argparse.Namespace, config: Config) -> int:
    _mutable(config)

    async def work(store: TenantStore) -> int:
        _print(await store.revoke_key(args.tenant, args.key, ACTOR))
        return 0

    return _with_store(config, work)


def _audit_list(args: argparse.Namespace, config: Config) -> int:
    if not 1 <= args.limit <= 10_000:
        raise ValueError("--limit must be from 1 to 10000")

    async def work(store: TenantStore) -> int:
        for entry in await store.list_audit(args.tenant, args.limit):
            _print(entry)
        return 0

    return _with_store(config, work)
