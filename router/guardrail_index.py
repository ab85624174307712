"""Which tenants and aliases of one config version carry guardrails, and the engines built for them.

A snapshot holds a ``GuardrailIndex`` only when some tenant or alias has a
``guardrails:`` list; otherwise ``Snapshot.guardrails`` is None, and that one
attribute check is all a request pays. A request's guardrails are its
tenant's list then its alias's (the alias the client asked for), built into
one ``Guardrails`` the first time that pair is asked for and kept for the
life of the snapshot: a reload builds afresh. Tenants and aliases without a
list share the key ``None``, so the cache is bounded by the config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from core.config import Config
from core.config_guardrails import GuardrailConfig

if TYPE_CHECKING:
    from policies.guardrails import Guardrails

Key = tuple[str | None, str | None]


class GuardrailIndex:
    __slots__ = ("_built", "aliases", "tenants")

    def __init__(self, tenants: dict[str, list[GuardrailConfig]], aliases: dict[str, list[GuardrailConfig]]) -> None:
        self.tenants = tenants
        self.aliases = aliases
        self._built: dict[Key, Guardrails | None] = {}

    @classmethod
    def of(cls, config: Config) -> GuardrailIndex | None:
        """The index of ``config``; None when no tenant or alias has a guardrail."""
        tenants = {t.id: list(t.guardrails) for t in config.tenants if t.guardrails}
        aliases = {m.alias: list(m.guardrails) for m in config.models if m.guardrails}
        return cls(tenants, aliases) if tenants or aliases else None

    def key(self, tenant: str, alias: str) -> Key:
        return (tenant if tenant in self.tenants else None, alias if alias in self.aliases else None)

    def configs(self, key: Key) -> list[GuardrailConfig]:
        tenant, alias = key
        return [*(self.tenants[tenant] if tenant is not None else ()), *(self.aliases[alias] if alias is not None else ())]

    def get(self, tenant: str, alias: str, build: Callable[[Sequence[GuardrailConfig]], Guardrails]) -> Guardrails | None:
        """The guardrails of a request of ``tenant`` to ``alias``; None when neither has any (or none that runs)."""
        key = self.key(tenant, alias)
        try:
            return self._built[key]
        except KeyError:
            pass
        configs = self.configs(key)
        built = build(configs) if configs else None
        guardrails = self._built[key] = built if built else None
        return guardrails
