"""The `sluicegate` command line."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

import msgspec

from core.config import Config, ConfigError
from core.config_check import load_config
from router.cli_admin import add_admin_commands, is_admin_command, run_admin_command
from router.cli_config import add_config_commands, run_config_command
from router.cli_ledger import add_ledger_commands, run_ledger_command
from router.logs import configure

log = logging.getLogger("sluicegate")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluicegate", description="OpenAI-compatible LLM router and inference gateway.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML or TOML config file (default: embedded defaults)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8300)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")

    worker = sub.add_parser("worker", help="run plugins' background workers without serving HTTP")
    worker.add_argument("--config", required=True, help="YAML or TOML config file")
    worker.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at /metrics on this port")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    add_config_commands(config_sub, sub)

    keys = sub.add_parser("keys", help="API key tools")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_sub.add_parser("new", help="create a key: prints it once, with the hash for the config file")
    keys_sub.add_parser("hash", help="hash a key read from standard input for the config file")
    add_admin_commands(sub, keys_sub)
    add_ledger_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if is_admin_command(args):
        return run_admin_command(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "worker":
        return _worker(args.config, args.metrics_port)
    if args.command == "config" and args.config_command == "check":
        return _check(args.file)
    if args.command in ("config", "canary"):
        return run_config_command(args)
    if args.command == "ledger":
        return run_ledger_command(args)
    return _keys(args.keys_command)


def _serve(args: argparse.Namespace) -> int:
    from router.config_resolve import resolve
    from router.defaults import embedded_config
    from router.server import serve

    try:
        config = load_config(args.config) if args.config else embedded_config()
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None}
        if overrides:
            config = msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, **overrides))
        config = msgspec.convert(msgspec.to_builtins(config), Config)  # re-validate overrides
        resolve(config)
    except (ConfigError, msgspec.ValidationError) as exc:
        # The server's output is JSON lines from its first: a config error names the key, never a secret.
        log.error("%s", exc)
        return 2
    if args.config is None and config.server.host not in _LOOPBACK:
        log.error("the embedded defaults serve loopback only; pass --config to bind elsewhere")
        return 2
    configure(config.server.log_level, config.server.access_log)
    _announce(config, args.config, args.config is None)
    serve(config, args.config)
    return 0


def _worker(path: str, metrics_port: int | None) -> int:
    from router.config_resolve import resolve
    from router.worker import run_worker

    try:
        config = load_config(path)
        resolve(config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    configure(config.server.log_level, config.server.access_log)
    log.info("worker (config: %s); plugins: %s", path, ", ".join(p.name for p in config.plugins if p.enabled) or "none")
    return run_worker(config, path, metrics_port)


def _announce(config: Config, path: str | None, embedded: bool) -> None:
    s = config.server
    source = path if path else "embedded defaults"
    log.info("serving the OpenAI API at http://%s:%s/v1 (%s worker(s), config: %s)", s.host, s.port, s.workers, source)
    models = ", ".join(m.alias for m in config.models) or "none configured"
    log.info("models: %s; tenants: %s", models, len(config.tenants))
    if embedded:
        log.info("the local tenant accepts the development key documented in the README")
    log.info("health at /healthz, readiness at /readyz, metrics at /metrics")


def _check(path: str) -> int:
    """The validation start-up and every reload run: OK here means `serve` accepts it."""
    from router.config_resolve import resolve

    try:
        config = load_config(path)
        resolve(config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.deployments)} deployments, {len(config.models)} models, {len(config.tenants)} tenants)")
    return 0


def _keys(command: str) -> int:
    from router.auth import hash_api_key, new_api_key

    if command == "new":
        key = new_api_key()
        print(f"key:  {key}\nhash: {hash_api_key(key)}\nThe key is shown once; store it now. Put only the hash in the config.")
        return 0
    key = sys.stdin.readline().strip() if not sys.stdin.isatty() else getpass.getpass("API key: ")
    if not key:
        print("no key given", file=sys.stderr)
        return 1
    print(hash_api_key(key))
    return 0


def run() -> None:
    # Log records (a library's warning, an uncaught exception) are JSON lines from the start;
    # what a command prints for its user (tables, a new key) is not a log record and stays as it is.
    configure("warning")
    sys.exit(main())
