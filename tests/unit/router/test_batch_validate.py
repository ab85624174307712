"""A batch's input file: each line checked as OpenAI checks it, errors naming 1-based line numbers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from core.config import Config, RoutingPolicy
from router.batch_validate import MAX_ERRORS, LineError, numbered_lines, parse_line, validate
from router.config_resolve import resolve
from router.snapshot import build

CHAT = "/v1/chat/completions"
CONFIG = msgspec.convert(
    {
        "deployments": [{"name": "d", "provider": "openai", "model": "m"}],
        "models": [{"alias": "allowed", "deployments": ["d"]}, {"alias": "forbidden", "deployments": ["d"]}],
    },
    Config,
)
ROUTER = build(resolve(CONFIG), 0, "", None).snapshot.router
POLICY = RoutingPolicy(allowed_models=["allowed"])


def line(custom_id: str = "a", **changes: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "allowed", "messages": [{"role": "user", "content": "hi"}]},
        **changes,
    }


async def chunks(text: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


async def check(lines: list[str], max_requests: int = 100) -> tuple[int, list[tuple[int | None, str, str | None]]]:
    result = await validate(chunks("\n".join(lines).encode()), CHAT, ROUTER, POLICY, max_requests)
    return result.total, [(e.line, e.code, e.param) for e in result.errors]


async def test_a_sound_file_has_no_errors_and_counts_its_requests() -> None:
    assert await check([json.dumps(line(str(i))) for i in range(5)]) == (5, [])


async def test_each_bad_line_is_named_by_its_number() -> None:
    body = {"model": "allowed", "messages": [{"role": "user", "content": "hi"}]}
    lines = [
        json.dumps(line("ok")),
        "",  # blank: skipped, still counted as a line
        "[1, 2]",
        "{oops",
        json.dumps(line("")),
        json.dumps(line("m", method="GET")),
        json.dumps(line("u", url="/v1/embeddings")),
        json.dumps(line("ok")),
        json.dumps(line("f", body={**body, "model": "forbidden"})),
        json.dumps(line("x", body={**body, "model": "unknown"})),
        json.dumps(line("s", body={**body, "stream": True})),
        json.dumps(line("n", body={"model": "allowed"})),
        json.dumps(line("t", body={**body, "temperature": "hot"})),
        json.dumps({"method": "POST", "url": CHAT, "body": body}),
        json.dumps(line("b", body=None)),
        json.dumps(line(custom_id=7)),  # type: ignore[arg-type]
    ]
    total, errors = await check(lines)
    assert total == 15
    assert errors == [
        (3, "invalid_request", None),
        (4, "invalid_json_line", None),
        (5, "missing_required_parameter", "custom_id"),
        (6, "invalid_method", "method"),
        (7, "invalid_url", "url"),
        (8, "duplicate_custom_id", "custom_id"),
        (9, "model_not_found", "body.model"),  # allowed by no policy of this tenant: as unknown
        (10, "model_not_found", "body.model"),
        (11, "invalid_value", "body.stream"),
        (12, "missing_required_parameter", "body.messages"),
        (13, "invalid_type", "body.temperature"),
        (14, "missing_required_parameter", "custom_id"),
        (15, "invalid_json", "body"),
        (16, "invalid_request", "custom_id"),
    ]


async def test_an_empty_file_and_too_many_requests_fail_the_file() -> None:
    assert await check(["", "  "]) == (0, [(None, "empty_file", None)])
    _, errors = await check([json.dumps(line(str(i))) for i in range(4)], max_requests=3)
    assert errors == [(4, "too_many_requests", None)]


async def test_errors_are_capped_and_the_rest_counted() -> None:
    total, errors = await check(["{bad"] * (MAX_ERRORS + 7), max_requests=1000)
    assert total == MAX_ERRORS + 7 and len(errors) == MAX_ERRORS + 1
    assert errors[-1][1] == "too_many_errors" and errors[-2][0] == MAX_ERRORS


async def test_lines_split_across_chunks_keep_their_numbers_and_crlf_is_accepted() -> None:
    text = b'{"a":1}\r\n\n{"b":2}\n{"c":3}'
    got = [item async for item in numbered_lines(chunks(text, 3))]
    assert got == [(1, b'{"a":1}\r'), (3, b'{"b":2}'), (4, b'{"c":3}')]
    parsed = parse_line(1, json.dumps(line("crlf")).encode() + b"\r", CHAT)
    assert parsed.custom_id == "crlf" and parsed.model == "allowed" and parsed.number == 1


def test_a_line_nested_too_deep_is_a_line_error_not_a_crash() -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"model":"allowed","messages":' + b"[" * 200 + b"]" * 200 + b"}"):
        raw = b'{"custom_id":"a","method":"POST","url":"' + CHAT.encode() + b'","body":' + body + b"}"
        with pytest.raises(LineError) as refused:
            parse_line(3, raw, CHAT)
        assert (refused.value.error.line, refused.value.error.code) == (3, "invalid_json")


def test_a_parsed_line_keeps_the_body_as_sent() -> None:
    body = {"model": "allowed", "messages": [{"role": "user", "content": "hi"}], "some_new_field": {"x": 1}}
    assert parse_line(2, json.dumps(line(body=body)).encode(), CHAT).body == body
    with pytest.raises(LineError) as refused:
        parse_line(9, json.dumps(line(url=CHAT + "/")).encode(), CHAT)
    assert refused.value.error.line == 9
