"""Batches passed through to an upstream: lines going up, results coming back, and the statuses they map to."""

from __future__ import annotations

import msgspec

from router.batch_native_lines import batch_usage, gateway_result, gateway_status, native_request_id, upstream_line
from router.batch_native_state import final_record, progressed
from router.batch_records import BatchRecord, BatchUsage, InputTokensDetails, NativeState, OutputTokensDetails, RequestCounts
from router.batch_state import new_record
from router.batch_validate import BatchLine
from serving.openai_batches import UpstreamBatch, UpstreamBatchError, UpstreamBatchErrors, UpstreamCounts

MESSAGES = [{"role": "user", "content": "hi"}]


def _decode(raw: bytes) -> dict[str, object]:
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    value = msgspec.json.decode(raw)
    assert isinstance(value, dict)
    return value


def test_a_line_goes_up_with_the_upstreams_model_and_url() -> None:
    line = BatchLine(3, "c-1", {"model": "my-alias", "messages": MESSAGES, "temperature": 0})
    sent = _decode(upstream_line(line, "/chat/completions", "my-azure-deployment", "chat"))
    assert sent == {
        "custom_id": "c-1", "method": "POST", "url": "/chat/completions",
        "body": {"model": "my-azure-deployment", "messages": MESSAGES, "temperature": 0},
    }  # fmt: skip
    assert line.body["model"] == "my-alias"  # the client's line is left as it was


def test_a_bound_is_added_only_where_the_request_sets_none() -> None:
    unbounded = BatchLine(1, "a", {"model": "m", "messages": MESSAGES})
    bounded = BatchLine(2, "b", {"model": "m", "messages": MESSAGES, "max_completion_tokens": 7})
    embedding = BatchLine(3, "c", {"model": "m", "input": "x"})
    assert _decode(upstream_line(unbounded, "/v1/chat/completions", "up", "chat", 4096))["body"] == {
        "model": "up",
        "messages": MESSAGES,
        "max_tokens": 4096,
    }
    assert "max_tokens" not in _decode(upstream_line(bounded, "/v1/chat/completions", "up", "chat", 4096))["body"]
    assert "max_tokens" not in _decode(upstream_line(embedding, "/v1/embeddings", "up", "embedding", 4096))["body"]
    assert "max_tokens" not in _decode(upstream_line(unbounded, "/v1/chat/completions", "up", "chat"))["body"]


def _upstream_result(custom_id: str, status: int, body: object, error: object = None) -> bytes:
    response = {"status_code": status, "request_id": "req_upstream", "body": body}
    return msgspec.json.encode({"id": "batch_req_upstream", "custom_id": custom_id, "response": response, "error": error})


def test_a_result_comes_back_as_the_gateways() -> None:
    body = {
        "id": "chatcmpl-up", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16, "prompt_tokens_details": {"cached_tokens": 3},
                  "completion_tokens_details": {"reasoning_tokens": 2}},
    }  # fmt: skip
    result = gateway_result(_upstream_result("c-1", 200, body), "my-alias", "batch_1")
    assert result is not None and result.ok and result.custom_id == "c-1"
    assert result.request_id == native_request_id("batch_1", "c-1") != native_request_id("batch_2", "c-1")
    line = _decode(result.line)
    assert line["id"] == f"batch_req_{result.request_id}" and line["custom_id"] == "c-1" and line["error"] is None
    response = line["response"]
    assert isinstance(response, dict)
    assert response["status_code"] == 200 and response["request_id"] == result.request_id
    assert response["body"]["model"] == "my-alias" and response["body"]["choices"] == body["choices"]
    assert "upstream" not in result.line.decode()
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.cached_tokens) == (
        11,
        5,
        3,
    )
    assert batch_usage(result) == BatchUsage(11, InputTokensDetails(3), 5, OutputTokensDetails(2), 16)
    # read twice (a finish resumed): the same line
    again = gateway_result(_upstream_result("c-1", 200, body), "my-alias", "batch_1")
    assert again is not None and again.line == result.line


def test_failed_results_and_lines_that_are_not_results() -> None:
    refused = gateway_result(_upstream_result("c-2", 400, {"error": {"message": "bad", "type": "invalid_request_error"}}), "a", "b")
    assert refused is not None and not refused.ok and refused.status == 400 and refused.error == "upstream_400"
    assert refused.usage is None and batch_usage(refused) == BatchUsage()
    errored = msgspec.json.encode({"id": "x", "custom_id": "c-3", "response": None, "error": {"code": "batch_expired", "message": "m"}})
    expired = gateway_result(errored, "a", "b")
    assert expired is not None and not expired.ok and expired.error == "batch_expired"
    assert _decode(expired.line)["response"] is None
    embedding = {"object": "list", "model": "text-embedding-3-small", "data": [], "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    embedded = gateway_result(_upstream_result("c-4", 200, embedding), "embed-alias", "b")
    assert embedded is not None and embedded.ok and embedded.usage is not None and embedded.usage.prompt_tokens == 4
    assert gateway_result(b"{not json", "a", "b") is None
    assert gateway_result(b'{"id": "x"}', "a", "b") is None  # no custom id


def test_statuses_while_running() -> None:
    assert [gateway_status(s) for s in ("validating", "in_progress", "finalizing", "cancelling")] == [
        "in_progress", "in_progress", "finalizing", "cancelling",
    ]  # fmt: skip
    assert gateway_status("completed") is None and gateway_status("anything-else") is None


def _running() -> BatchRecord:
    record = new_record("t", "k", endpoint="/v1/chat/completions", input_file_id="file-1", metadata=None,
                        output_expires_after_s=None, now=1000.0, created_ns=1)  # fmt: skip
    batch = msgspec.structs.replace(record.batch, status="in_progress", in_progress_at=1001, request_counts=RequestCounts(total=4))
    return msgspec.structs.replace(record, batch=batch, native=NativeState(deployment="d", upstream_batch_id="up"))


def test_progress_and_the_end_map_to_the_gateways_batch() -> None:
    record = _running()
    moving = progressed(
        record, UpstreamBatch(id="up", status="finalizing", request_counts=UpstreamCounts(total=4, completed=3, failed=1)), 1500.0
    )
    assert moving.batch.status == "finalizing" and moving.batch.finalizing_at == 1500
    assert moving.batch.request_counts == RequestCounts(total=4, completed=3, failed=1) and moving.native is not None
    assert moving.native.upstream_status == "finalizing"
    cancelling = msgspec.structs.replace(record, batch=msgspec.structs.replace(record.batch, status="cancelling"))
    assert progressed(cancelling, UpstreamBatch(id="up", status="in_progress"), 1500.0).batch.status == "cancelling"

    counts, files, usage = RequestCounts(4, 3, 1), ("file-out", "file-err"), BatchUsage()
    done = final_record(record, UpstreamBatch(id="up", status="completed"), counts, files, 2000.0, usage)
    assert (done.batch.status, done.batch.output_file_id, done.batch.error_file_id) == ("completed", "file-out", "file-err")
    assert final_record(record, UpstreamBatch(id="up", status="expired"), counts, files, 2000.0, usage).batch.status == "expired"
    assert final_record(cancelling, UpstreamBatch(id="up", status="cancelled"), counts, files, 2000.0, usage).batch.status == "cancelled"
    # cancelled upstream without a client's cancel: still cancelled, not completed
    assert final_record(record, UpstreamBatch(id="up", status="cancelled"), counts, files, 2000.0, usage).batch.status == "cancelled"
    errors = UpstreamBatchErrors(data=[UpstreamBatchError(code="invalid_model", line=2)])
    refused = final_record(record, UpstreamBatch(id="up", status="failed", errors=errors), counts, (None, None), 2000.0, usage)
    assert refused.batch.status == "failed" and refused.batch.errors is not None
    assert [(e.code, e.line) for e in refused.batch.errors.data] == [("invalid_model", 2)]
    assert record.native is not None
    revoked = msgspec.structs.replace(record, native=msgspec.structs.replace(record.native, stop="revoked"))
    ended = final_record(revoked, UpstreamBatch(id="up", status="cancelled"), counts, files, 2000.0, usage)
    assert ended.batch.status == "failed" and ended.batch.errors is not None and ended.batch.errors.data[0].code == "credential_revoked"
