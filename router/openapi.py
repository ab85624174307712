"""The OpenAPI document: Litestar's, with the request bodies the hot routes read themselves.

The OpenAI routes take the raw request (they decode with msgspec, keep unknown
fields, and skip the framework's parsing), so Litestar cannot see their bodies.
A route names its body's type in ``opt={"body": Struct}``; the document served
at ``/schema/openapi.json`` gets that type's JSON schema as the request body.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import BaseRoute

BODY = "body"
_REF = "#/components/schemas/{name}"


def bodies(app_routes: Iterable[BaseRoute]) -> dict[tuple[str, str], type]:
    """(path as OpenAPI writes it, method) --> the body type each route declares."""
    found: dict[tuple[str, str], type] = {}
    for route in app_routes:
        for handler in getattr(route, "route_handlers", ()):
            kind = handler.opt.get(BODY)
            if kind is not None:
                for method in handler.http_methods:
                    found[(route.path_format, method.lower())] = kind
    return found


def with_bodies(document: dict[str, Any], declared: dict[tuple[str, str], type]) -> dict[str, Any]:
    """A copy of ``document`` whose operations carry the declared request bodies."""
    out = copy.deepcopy(document)
    if not declared:
        return out
    kinds = sorted(set(declared.values()), key=lambda k: k.__name__)
    refs, components = msgspec.json.schema_components(kinds, ref_template=_REF)
    by_kind = dict(zip(kinds, refs))
    out.setdefault("components", {}).setdefault("schemas", {}).update(components)
    for (path, method), kind in declared.items():
        operation = out.get("paths", {}).get(path, {}).get(method)
        if operation is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_kind[kind]}}}
    return out


class _Document(JsonRenderPlugin):
    def __init__(self) -> None:
        super().__init__(path="/openapi.json")
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._rendered is None:
            self._rendered = msgspec.json.encode(with_bodies(openapi_schema, bodies(request.app.routes)))
        return self._rendered


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(title="Sluicegate", version=version, path="/schema", render_plugins=[_Document()])
