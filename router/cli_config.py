"""`sluicegate config apply|show|history|diff|rollback` and `sluicegate canary ...`: clients of the admin API.

They talk to a running gateway (``--url``, default ``SLUICEGATE_URL`` or
http://127.0.0.1:8300) with an ``ops:admin`` key from ``SLUICEGATE_ADMIN_KEY``,
so a change from the CLI is validated, versioned, audited and applied exactly
as one through the API. Errors print the API's message; exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib import error, request

from core.config import ConfigError
from core.config_check import load_config

PREFIX = "/admin/v1"
_TIMEOUT_S = 30.0


def add_config_commands(
    config_sub: argparse._SubParsersAction[argparse.ArgumentParser], sub: argparse._SubParsersAction[argparse.ArgumentParser]
) -> None:
    apply = config_sub.add_parser("apply", help="make a config file's live sections the new version")
    apply.add_argument("file")
    apply.add_argument("--if-match", type=int, help="refuse (409) unless this is still the latest version")
    apply.add_argument("--reason", default="")
    config_sub.add_parser("show", help="the version serving and its document")
    history = config_sub.add_parser("history", help="versions, newest first")
    history.add_argument("--limit", type=int, default=20)
    diff = config_sub.add_parser("diff", help="what changed between two versions")
    diff.add_argument("old", type=int)
    diff.add_argument("new", type=int, nargs="?")
    rollback = config_sub.add_parser("rollback", help="a new version with an earlier version's document")
    rollback.add_argument("version", type=int)
    rollback.add_argument("--reason", default="")
    for parser in (apply, history, diff, rollback, config_sub.choices["show"]):
        _client_options(parser)

    canary = sub.add_parser("canary", help="see and steer canaries")
    canary_sub = canary.add_subparsers(dest="canary_command", required=True)
    _client_options(canary_sub.add_parser("status", help="every canary: phase, weight, numbers, last decision"))
    for action in ("promote", "pause", "resume", "abort"):
        steer = canary_sub.add_parser(action, help=f"{action} a model's canary")
        steer.add_argument("model")
        steer.add_argument("--reason", default="")
        _client_options(steer)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("SLUICEGATE_URL", "http://127.0.0.1:8300"), help="the gateway's base URL")


def run_config_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "canary":
            return _canary(args)
        return _config(args)
    except ApiError as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"sluicegate: {exc}", file=sys.stderr)
        return 1


def _config(args: argparse.Namespace) -> int:
    command = args.config_command
    if command == "apply":
        document = _live_sections(args.file)
        headers = {"if-match": f'"{args.if_match}"'} if args.if_match is not None else {}
        _print(_call(args.url, "PUT", "/config", {"config": document, "reason": args.reason or f"applied {Path(args.file).name}"}, headers))
    elif command == "show":
        _print(_call(args.url, "GET", "/config"))
    elif command == "history":
        for item in _call(args.url, "GET", f"/config/history?limit={args.limit}")["data"]:
            print(json.dumps(item, sort_keys=True))
    elif command == "diff":
        new = f"&to={args.new}" if args.new is not None else ""
        for change in _call(args.url, "GET", f"/config/diff?from={args.old}{new}")["changes"]:
            print(json.dumps(change, sort_keys=True))
    else:
        _print(_call(args.url, "POST", "/config/rollback", {"version": args.version, "reason": args.reason}))
    return 0


def _canary(args: argparse.Namespace) -> int:
    if args.canary_command == "status":
        for item in _call(args.url, "GET", "/canaries")["data"]:
            print(json.dumps(item, sort_keys=True))
        return 0
    _print(_call(args.url, "POST", f"/canaries/{args.model}/{args.canary_command}", {"reason": args.reason}))
    return 0


def _live_sections(path: str) -> dict[str, Any]:
    """The file, validated as `serve` would read it, reduced to what reloads."""
    import msgspec

    return msgspec.to_builtins(load_config(path).live())  # type: ignore[no-any-return]


class ApiError(Exception):
    pass


def _call(base: str, method: str, path: str, body: object = None, headers: dict[str, str] | None = None) -> Any:
    key = os.environ.get("SLUICEGATE_ADMIN_KEY")
    if not key:
        raise ApiError("set SLUICEGATE_ADMIN_KEY to a key with the ops:admin scope")
    data = json.dumps(body).encode() if body is not None else None
    req = request.Request(f"{base.rstrip('/')}{PREFIX}{path}", data=data, method=method)
    req.add_header("authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with request.urlopen(req, timeout=_TIMEOUT_S) as response:
            return json.loads(response.read())
    except error.HTTPError as exc:
        raise ApiError(f"{exc.code}: {_message(exc.read())}") from None
    except (error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace")


def _print(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
