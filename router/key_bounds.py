"""A key minted by a tenant's own key is never more powerful than the key that made it.

Operators' keys (``ops:admin``) are not bound: they administer every tenant. Any
other parent key bounds each field of the new key's spec; a field left out is
inherited from the parent key, so the child is bound as the parent is, and a
field given beyond the parent's bound is refused with a 403 (``permission_error``)
whose ``param`` names the field:

- scopes: only scopes the parent holds (``tenant:write`` includes ``tenant:read``),
  never an ``ops:`` scope. Left out: none (the least, not the parent's);
- priority: at most the parent's effective priority. Left out: the parent key's
  own (none: the tenant's, as for the parent);
- limits, each of them (``rpm``, ``tpm``, ``max_concurrent``): at most the
  parent's effective limit, the smaller of its key's and its tenant's (none set:
  unlimited). Left out: the parent key's value (none: the tenant's applies);
- budgets: one with the kind, period and hardness of a parent's budget (its
  key's or its tenant's) at most that budget's limit. Each budget of the parent
  key that the child does not restate is inherited;
- expiry: not after the parent's. Left out: the parent's.
"""

from __future__ import annotations

from datetime import datetime
from typing import get_args

import msgspec

from core.config import BudgetConfig, LimitsConfig, Priority
from core.errors import PermissionDenied
from core.principal import Principal
from router.tenant_records import READ_SCOPE, WRITE_SCOPE, KeyCreate, as_utc

# Highest first, as the Priority type lists them.
_RANK = {name: rank for rank, name in enumerate(get_args(Priority))}
BudgetClass = tuple[str, str, bool]


def bounded_by(parent: Principal, spec: KeyCreate) -> KeyCreate:
    """``spec`` with what it left out inherited from ``parent``; PermissionDenied for what exceeds it."""
    _check_scopes(parent, spec.scopes)
    return msgspec.structs.replace(
        spec,
        priority=_priority(parent, spec.priority),
        limits=_limits(parent, spec.limits),
        budgets=_budgets(parent, spec.budgets),
        expires_at=_expiry(parent, spec.expires_at),
    )


def _holds(principal: Principal, scope: str) -> bool:
    # Writing a tenant includes reading it.
    return principal.has_scope(scope) or (scope == READ_SCOPE and principal.has_scope(WRITE_SCOPE))


def _check_scopes(parent: Principal, scopes: list[str]) -> None:
    beyond = sorted({s for s in scopes if s.startswith("ops:") or not _holds(parent, s)})
    if beyond:
        raise PermissionDenied(f"This key may not grant the scope(s) {', '.join(beyond)} in `scopes`.", param="scopes")


def _priority(parent: Principal, asked: Priority | None) -> Priority | None:
    if asked is None:
        return parent.key_priority
    if _RANK[asked] < _RANK[parent.priority]:
        raise PermissionDenied(
            f"`priority` may be at most {parent.priority!r}, the priority of the key that creates it.", param="priority"
        )
    return asked


def _limits(parent: Principal, asked: LimitsConfig | None) -> LimitsConfig | None:
    own = parent.key_limits or LimitsConfig()
    given = asked or LimitsConfig()
    merged: dict[str, int | None] = {}
    for name in LimitsConfig.__struct_fields__:
        value: int | None = getattr(given, name)
        if value is None:
            merged[name] = getattr(own, name)
            continue
        bound = _smaller(getattr(own, name), getattr(parent.tenant_limits, name))
        if bound is not None and value > bound:
            raise PermissionDenied(
                f"`limits.{name}` may be at most {bound}, the limit of the key that creates it.", param=f"limits.{name}"
            )
        merged[name] = value
    limits = LimitsConfig(**merged)
    return None if limits == LimitsConfig() else limits


def _smaller(a: int | None, b: int | None) -> int | None:
    # None is unlimited.
    if a is None:
        return b
    return a if b is None else min(a, b)


def _budgets(parent: Principal, asked: list[BudgetConfig]) -> list[BudgetConfig]:
    bounds: dict[BudgetClass, int] = {}
    for budget in (*parent.tenant_budgets, *parent.key_budgets):
        bounds[_class(budget)] = min(budget.limit, bounds.get(_class(budget), budget.limit))
    for i, budget in enumerate(asked):
        bound = bounds.get(_class(budget))
        if bound is not None and budget.limit > bound:
            raise PermissionDenied(
                f"`budgets[{i}].limit` may be at most {bound}, the {budget.period} {budget.kind} budget of the key"
                " that creates it.",
                param=f"budgets[{i}].limit",
            )
    restated = {_class(b) for b in asked}
    return [*asked, *(b for b in parent.key_budgets if _class(b) not in restated)]


def _class(budget: BudgetConfig) -> BudgetClass:
    return budget.kind, budget.period, budget.hard


def _expiry(parent: Principal, asked: datetime | None) -> datetime | None:
    if parent.expires_at is None:
        return asked
    if asked is None:
        return parent.expires_at
    if as_utc(asked) > as_utc(parent.expires_at):
        raise PermissionDenied(
            "`expires_at` may not be later than the expiry of the key that creates it.", param="expires_at"
        )
    return asked
