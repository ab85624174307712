"""A Batch's `usage` sums its completed requests' usage, whatever the endpoint; its `model` is the alias its lines name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import msgspec

from core.config import Config
from policies.routing import Router
from router.batch_records import BatchUsage, InputTokensDetails, OutputTokensDetails
from router.batch_request import line_usage, response_usage, result_line
from router.batch_state import counted, finished, new_record, validated
from router.batch_validate import validate
from router.config_resolve import resolve
from router.snapshot import build
from router.unary import Outcome


def test_each_endpoints_usage_counts_alike() -> None:
    chat = {"usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                      "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2}}}  # fmt: skip
    assert response_usage(json.dumps(chat).encode()) == BatchUsage(10, InputTokensDetails(3), 4, OutputTokensDetails(2), 14)
    embedding = {"object": "list", "data": [], "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    assert response_usage(json.dumps(embedding).encode()) == BatchUsage(input_tokens=7, total_tokens=7)
    responses = {"usage": {"input_tokens": 5, "output_tokens": 6, "input_tokens_details": {"cached_tokens": 1}}}
    assert response_usage(json.dumps(responses).encode()) == BatchUsage(5, InputTokensDetails(1), 6, OutputTokensDetails(0), 11)


def test_a_response_without_readable_usage_counts_nothing() -> None:
    for body in (b"{}", b"not json", b'{"usage": null}', b'{"usage": {"prompt_tokens": "many"}}', b"[]"):
        assert response_usage(body) == BatchUsage()


def test_a_result_line_gives_back_the_usage_of_its_response() -> None:
    body = json.dumps({"id": "x", "usage": {"prompt_tokens": 9, "completion_tokens": 1}}).encode()
    line = result_line("c1", Outcome(200, body, "req-1")).rstrip(b"\n")
    assert line_usage(line) == BatchUsage(input_tokens=9, output_tokens=1, total_tokens=10)
    assert line_usage(b'{"custom_id": "c1", "response": null}') == BatchUsage()
    assert line_usage(b'{"custom_id": "c1", "respo') == BatchUsage()


def test_usage_adds_up_and_a_copy_is_its_own() -> None:
    total = BatchUsage()
    total.add(BatchUsage(1, InputTokensDetails(1), 2, OutputTokensDetails(1), 3))
    kept = total.copy()
    total.add(BatchUsage(10, InputTokensDetails(0), 20, OutputTokensDetails(0), 30))
    assert kept == BatchUsage(1, InputTokensDetails(1), 2, OutputTokensDetails(1), 3)
    assert total == BatchUsage(11, InputTokensDetails(1), 22, OutputTokensDetails(1), 33)


def test_the_record_carries_model_and_usage_to_the_end() -> None:
    record = new_record(
        "t", "k", endpoint="/v1/chat/completions", input_file_id="file-in", metadata=None, output_expires_after_s=None, now=1.0,
        created_ns=1,
    )  # fmt: skip
    assert record.batch.model is None and record.batch.usage is None
    running = validated(record, 2, 2.0, "gpt-x")
    assert running.batch.model == "gpt-x" and running.batch.usage == BatchUsage()
    usage = BatchUsage(input_tokens=3, output_tokens=4, total_tokens=7)
    progressed = counted(running, running.batch.request_counts, usage)
    assert progressed.batch.usage == usage
    assert counted(progressed, progressed.batch.request_counts).batch.usage == usage  # no usage given: kept
    done = finished(progressed, progressed.batch.request_counts, (None, None), 3.0, ran_out=False, usage=BatchUsage(total_tokens=9))
    shown = msgspec.json.decode(msgspec.json.encode(done.batch))
    assert shown["model"] == "gpt-x" and shown["usage"]["total_tokens"] == 9
    assert shown["usage"]["input_tokens_details"] == {"cached_tokens": 0}


async def test_validation_names_the_model_only_when_every_line_shares_it() -> None:
    deployments = [{"name": n, "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": n} for n in ("a", "b")]
    config = msgspec.convert(
        {"deployments": deployments, "models": [{"alias": "a", "deployments": ["a"]}, {"alias": "b", "deployments": ["b"]}]}, Config
    )
    router: Router = build(resolve(config), 0, "h", None).snapshot.router

    async def lines(*models: str) -> AsyncIterator[bytes]:
        for i, model in enumerate(models):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            yield json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode() + b"\n"

    policy = config.policies.routing
    assert (await validate(lines("a", "a"), "/v1/chat/completions", router, policy, 10)).model == "a"
    assert (await validate(lines("a", "b"), "/v1/chat/completions", router, policy, 10)).model is None
