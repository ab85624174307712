"""The admin API for the live config and canaries, under /admin/v1 (scope ``ops:admin``).

- ``GET  /config``: the version serving here, its document and ``ETag: "<version>"``.
- ``PUT  /config``: replace the document; ``If-Match: "<version>"`` makes it
  conditional (409 when another version was written since), 422 names the key
  of an invalid document, 503 when the version store is unreachable.
- ``GET  /config/history``, ``GET /config/versions/{n}``, ``GET /config/diff?from=&to=``.
- ``POST /config/rollback``: a new version whose document is version ``n``'s.
- ``GET  /canaries``; ``POST /canaries/{model}/{promote|pause|resume|abort}``.
Secrets stay references in every document; nothing here resolves them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post, put

from core.config import ConfigError, LiveConfig
from core.config_check import decode_live
from core.config_version import ConfigVersion, InvalidConfig, VersionConflict
from core.errors import InvalidRequest
from router.body import read_body
from router.config_diff import diff
from router.config_store import MAX_HISTORY_LIMIT
from router.decode import decode_object
from router.gateway import Gateway
from router.openapi import BODY
from router.routes_admin import PREFIX, caller_of

JSON = "application/json"


class ConfigWrite(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    config: dict[str, Any]
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class Rollback(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: Annotated[int, msgspec.Meta(ge=1)]
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class CanaryAction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


async def _ops(request: Request[Any, Any, Any]) -> tuple[Gateway, str]:
    caller, _ = await caller_of(request)
    caller.require_ops()
    gateway: Gateway = request.app.state.gateway
    return gateway, caller.actor


async def _body(request: Request[Any, Any, Any], gateway: Gateway, kind: type[Any]) -> Any:
    raw = await read_body(request, gateway.base.server.max_body_bytes)
    obj = decode_object(raw) if raw else {}
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request body: {exc}.") from None


def _version_json(version: ConfigVersion, *, document: bool, status: int = 200) -> Response[bytes]:
    body: dict[str, Any] = msgspec.to_builtins(version.summary())
    if document:
        body["config"] = msgspec.to_builtins(version.document)
    return Response(msgspec.json.encode(body), media_type=JSON, status_code=status, headers={"etag": f'"{version.version}"'})


def _if_match(request: Request[Any, Any, Any]) -> int | None:
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InvalidRequest('`If-Match` must be a config version, as in the ETag: "12".', param="If-Match")
    return int(text)


def _writable(gateway: Gateway) -> None:
    base = gateway.base
    if base.state.config == "file" and base.server.workers > 1:
        # One worker's history is not another's: a write here would reach one process only.
        raise VersionConflict(
            "With several workers and `state.config: file`, change the config by editing the file (or use `state.config: postgres`)."
        )


# --- the operations, shared by the routes below and the console (router.ui) ------------


async def current_version(gateway: Gateway) -> ConfigVersion:
    """The version serving here, with its document."""
    return await gateway.reloader.store.get(gateway.snapshot.version)


async def replace_config(gateway: Gateway, actor: str, raw: dict[str, Any], *, expected: int | None, reason: str) -> ConfigVersion:
    """A new version holding ``raw``; 409 when ``expected`` is not the latest, 422 for an invalid document."""
    _writable(gateway)
    document = _document(raw)
    return await gateway.reloader.commit(document, expected=expected, actor=actor, reason=reason or "replaced through the admin API")


async def roll_back(gateway: Gateway, actor: str, version: int, *, expected: int | None, reason: str) -> ConfigVersion:
    """A new version whose document is ``version``'s."""
    _writable(gateway)
    target = await gateway.reloader.store.get(version)
    return await gateway.reloader.commit(target.document, expected=expected, actor=actor, reason=reason or f"rollback to version {version}")


async def version_diff(gateway: Gateway, old: int, new: int) -> dict[str, Any]:
    store = gateway.reloader.store
    a, b = await store.get(old), await store.get(new)
    return {"from": old, "to": new, "changes": diff(msgspec.to_builtins(a.document), msgspec.to_builtins(b.document))}


async def steer(gateway: Gateway, actor: str, model: str, action: str, reason: str) -> ConfigVersion:
    """promote, pause, resume or abort the canary of ``model``: a new version."""
    _writable(gateway)
    if action not in ("promote", "pause", "resume", "abort"):
        raise InvalidRequest("The action must be one of promote, pause, resume, abort.", param="action")
    step: Literal["promote", "pause", "resume", "abort"] = action  # type: ignore[assignment]
    return await gateway.canary_control.operate(model, step, actor, reason)


@get(f"{PREFIX}/config")
async def get_config(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, _ = await _ops(request)
    return _version_json(await current_version(gateway), document=True)


@put(f"{PREFIX}/config", opt={BODY: ConfigWrite})
async def put_config(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, actor = await _ops(request)
    _writable(gateway)
    expected = _if_match(request)
    spec: ConfigWrite = await _body(request, gateway, ConfigWrite)
    version = await replace_config(gateway, actor, spec.config, expected=expected, reason=spec.reason)
    return _version_json(version, document=False)


def _document(raw: dict[str, Any]) -> LiveConfig:
    """One path for every writer: the same decoding and checks a stored version gets."""
    try:
        return decode_live(msgspec.json.encode(raw), "config")
    except ConfigError as exc:
        raise InvalidConfig(str(exc)) from None


@get(f"{PREFIX}/config/history")
async def config_history(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, _ = await _ops(request)
    limit = _int(request.query_params.get("limit"), "limit", 50, MAX_HISTORY_LIMIT) or 50
    before = _int(request.query_params.get("before"), "before", None, 2**62)
    items = await gateway.reloader.store.history(limit, before)
    return Response(msgspec.json.encode({"object": "list", "data": items}), media_type=JSON)


@get(f"{PREFIX}/config/versions/{{version:int}}")
async def config_version(request: Request[Any, Any, Any], version: int) -> Response[bytes]:
    gateway, _ = await _ops(request)
    return _version_json(await gateway.reloader.store.get(version), document=True)


@get(f"{PREFIX}/config/diff")
async def config_diff(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, _ = await _ops(request)
    old = _int(request.query_params.get("from"), "from", None, 2**62)
    new = _int(request.query_params.get("to"), "to", gateway.snapshot.version, 2**62) or gateway.snapshot.version
    if old is None:
        raise InvalidRequest("`from` is required: the version to compare.", param="from")
    return Response(msgspec.json.encode(await version_diff(gateway, old, new)), media_type=JSON)


@post(f"{PREFIX}/config/rollback", status_code=200, opt={BODY: Rollback})
async def config_rollback(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, actor = await _ops(request)
    _writable(gateway)
    expected = _if_match(request)
    spec: Rollback = await _body(request, gateway, Rollback)
    version = await roll_back(gateway, actor, spec.version, expected=expected, reason=spec.reason)
    return _version_json(version, document=False)


@get(f"{PREFIX}/canaries")
async def list_canaries(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, _ = await _ops(request)
    return Response(msgspec.json.encode({"object": "list", "data": await gateway.canary_control.status()}), media_type=JSON)


@post(f"{PREFIX}/canaries/{{model:str}}/{{action:str}}", status_code=200, opt={BODY: CanaryAction})
async def steer_canary(request: Request[Any, Any, Any], model: str, action: str) -> Response[bytes]:
    gateway, actor = await _ops(request)
    _writable(gateway)
    if action not in ("promote", "pause", "resume", "abort"):
        raise InvalidRequest("The action must be one of promote, pause, resume, abort.", param="action")
    spec: CanaryAction = await _body(request, gateway, CanaryAction)
    version = await steer(gateway, actor, model, action, spec.reason)
    return _version_json(version, document=False)


def _int(raw: str | None, name: str, default: int | None, most: int) -> int | None:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"`{name}` must be an integer from 1 to {most}.", param=name)
    return int(raw)


ROUTES = [get_config, put_config, config_history, config_version, config_diff, config_rollback, list_canaries, steer_canary]
