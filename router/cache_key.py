"""The exact response cache's key: who may see an answer, and everything that changes it, hashed.

The key is the SHA-256 of one canonical JSON array (keys of every object
sorted, so the order a client wrote them in does not matter)::

    [KEY_FORMAT, scope, alias, deployment, deployment_version, kind, shape, fields]

- ``scope`` says who may see the entry: ``tenant:<id>``, or ``shared:<name>``
  for a scope tenants opt into (``cache_scope``); the two kinds never meet.
- ``alias``, ``deployment`` and its config ``deployment_version``: an answer
  of one deployment is never replayed for another, nor after its config changed.
- ``kind`` (chat, completion, embedding, responses): the same fields mean
  different requests in different APIs.
- ``shape``: what the entry replays, ``"json"`` for a unary answer, or
  ``["sse", stream_options]`` for a stream. A replay is the stored bytes as
  they came, never a unary answer cut into chunks nor chunks joined into one:
  a streamed request hits only an entry stored from a stream with the same
  options. ``stream: false`` is the same as no ``stream``, and
  ``include_usage: false`` as no ``include_usage``.
- ``fields``: the request body as sent to the deployment (after the PII step)
  less the few fields known not to change the answer (``_INERT``). Every other
  field is in, unknown ones included: a field left out of the key is a data
  leak, one kept in costs a miss at most. Values are not normalised either:
  ``temperature: 0`` and ``0.0`` are two keys.

Fields that do not change the answer: for chat, completions and embeddings,
``user``, ``safety_identifier`` (who the end user is, for abuse monitoring),
``metadata`` and ``store`` (what the provider keeps) and ``prompt_cache_key``
(a routing hint of the provider's prompt cache). ``service_tier`` is in: the
answer names its tier, and the cost differs. A Responses request is echoed
in its answer, so for kind ``responses`` every field but ``stream`` and
``stream_options`` (the shape) is in the key.

Some requests are never cached (``cache_key`` answers None): a Responses
request naming state kept elsewhere (``background``, ``conversation``,
``previous_response_id``: the gateway expands a stored conversation into the
input before it gets here), a ``stream`` that is neither a boolean nor null, and a body that
is not plain JSON. Whether a request qualifies under an alias's policy is
``qualifies``; the caller asks both.

What an entry holds must be the deployment's own answer, before the response
is restored or rendered for the client: under ``mask_and_restore`` two
requests differing only in masked values share a key, and each restores the
answer with its own values.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from core.config_cache import QualifyMode, TenantCacheConfig
from serving.base import JsonObject, Kind

# Changes whenever what goes into the key changes, so that old entries are never read with new meanings.
KEY_FORMAT: Final = 1

_encoder = msgspec.json.Encoder(order="sorted")

_INERT_OPENAI = frozenset({"stream", "stream_options", "user", "safety_identifier", "metadata", "store", "prompt_cache_key"})
_INERT: dict[str, frozenset[str]] = {
    "chat": _INERT_OPENAI,
    "completion": _INERT_OPENAI,
    "embedding": _INERT_OPENAI,
    # A Response object repeats the request's settings: only the shape fields stay out.
    "responses": frozenset({"stream", "stream_options"}),
}
# The fields a semantic match compares by meaning instead of bytes.
_CONVERSATION = frozenset({"messages", "prompt"})
# Responses fields that name state kept elsewhere: the same body may mean another conversation tomorrow.
_STATEFUL = ("background", "conversation", "previous_response_id")


def cache_scope(tenant: str, config: TenantCacheConfig | None, self_hosted_only: bool) -> str | None:
    """Who may see this request's entries; None when the tenant opted out.

    ``self_hosted_only``: the tenant's routing policy, or this request's PII
    step, allows only self-hosted deployments; such a request never shares.
    """
    if config is not None and not config.enabled:
        return None
    if config is None or config.scope is None or self_hosted_only:
        return "tenant:" + tenant
    return "shared:" + config.scope


def qualifies(body: JsonObject, qualify: QualifyMode, *, kind: Kind) -> bool:
    """Whether an alias caching with ``qualify`` caches this request.

    ``deterministic``: an embedding, or a request with ``temperature`` 0 or a
    ``seed`` (its answer would not change anyway); ``always``: every request.
    """
    if qualify == "always" or kind == "embedding":
        return True
    temperature = body.get("temperature")
    if type(temperature) in (int, float) and temperature == 0:
        return True
    seed = body.get("seed")
    return seed is not None and type(seed) is int


def cache_key(scope: str, alias: str, deployment: str, deployment_version: str, kind: Kind, body: JsonObject) -> str | None:
    """The entry's key (64 hex digits, revealing nothing of its material), or None when the request cannot be cached."""
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        return None
    if kind == "responses" and any(body.get(name) not in (None, False) for name in _STATEFUL):
        return None
    shape: object = ["sse", _stream_options(body.get("stream_options"))] if stream else "json"
    inert = _INERT[kind]
    fields = {name: value for name, value in body.items() if name not in inert}
    try:
        material = _encoder.encode([KEY_FORMAT, scope, alias, deployment, deployment_version, kind, shape, fields])
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
        return None
    return hashlib.sha256(material).hexdigest()


def semantic_partition(alias: str, deployment: str, deployment_version: str, kind: Kind, body: JsonObject) -> str | None:
    """Where the semantic cache files a conversation: everything of the key but the conversation itself.

    Two requests share a partition when they differ only in ``messages`` (or
    ``prompt``): their answers may then stand in for each other if the
    conversations are near enough. The scope is kept apart (the index files
    entries under scope and partition). None where ``cache_key`` would be.
    """
    reduced = {name: value for name, value in body.items() if name not in _CONVERSATION}
    key = cache_key("", alias, deployment, deployment_version, kind, reduced)
    return None if key is None else "s1:" + key


def _stream_options(options: object) -> object:
    """``stream_options`` as it shapes a stream: ``include_usage: false`` is the default, and so left out."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        return options
    return {name: value for name, value in options.items() if not (name == "include_usage" and value is False)}
