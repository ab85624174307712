"""Console forms become the admin API's input types with the API's validation; errors name the field."""

from __future__ import annotations

import pytest
from litestar.datastructures import FormMultiDict

from router.tenant_records import KeyCreate, TenantCreate, TenantUpdate
from router.ui import charts
from router.ui.forms import FieldError, convert, nested


def form(*pairs: tuple[str, str]) -> FormMultiDict:
    return FormMultiDict(list(pairs))


def test_fields_named_by_path_nest_and_empty_ones_are_left_out() -> None:
    data = nested(
        form(("csrf", "t"), ("id", "acme"), ("limits.rpm", "60"), ("limits.tpm", ""), ("budgets[0].kind", "money"),
             ("budgets[0].limit", "100"), ("budgets[0].alert_at", "50, 80"), ("scopes", "tenant:read"), ("scopes", "tenant:write")),
        lists=("alert_at",), flags=("budgets[0].hard", "disabled"),
    )  # fmt: skip
    assert data == {
        "id": "acme", "limits": {"rpm": "60"}, "scopes": ["tenant:read", "tenant:write"], "disabled": False,
        "budgets": [{"kind": "money", "limit": "100", "alert_at": ["50", "80"], "hard": False}],
    }  # fmt: skip


def test_text_values_take_the_api_types_and_constraints() -> None:
    spec = convert({"id": "acme", "weight": "3", "limits": {"rpm": "60"}}, TenantCreate)
    assert spec.weight == 3 and spec.limits.rpm == 60
    assert convert({"name": "New"}, TenantUpdate).fields_set() == {"name"}
    assert convert({"scopes": ["tenant:read"]}, KeyCreate).scopes == ["tenant:read"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"id": "bad id"}, "id"),
        ({"id": "ok", "weight": "zero"}, "weight"),
        ({"id": "ok", "weight": "0"}, "weight"),
        ({"id": "ok", "limits": {"rpm": "-1"}}, "limits.rpm"),
        ({"id": "ok", "budgets": [{"kind": "money", "period": "daily", "limit": "x"}]}, "budgets[0].limit"),
        ({"id": "ok", "surprise": "1"}, None),
    ],
)
def test_invalid_input_names_its_field(data: dict[str, object], field: str | None) -> None:
    with pytest.raises(FieldError) as caught:
        convert(data, TenantCreate)
    assert caught.value.field == field and caught.value.status == 400


def test_charts_escape_labels_and_carry_no_style_or_script() -> None:
    svg = str(charts.hbars([("<script>x</script>", 5.0), ("b", 0.0)], charts.count, title="t"))
    assert "<script>" not in svg and "style=" not in svg and "&lt;script&gt;" in svg
    assert "No data" in str(charts.columns([], charts.usd, title="t"))
    assert charts.series(["a", "b"], [{"k": "b", "v": 2}], "k", "v") == [("a", 0.0), ("b", 2.0)]
    assert charts.usd(90_000_000) == "$0.000090"
