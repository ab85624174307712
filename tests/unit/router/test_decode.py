from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from router.decode import decode_body
from router.wire import ChatRequest, CompletionRequest, EmbeddingRequest


def _err(body: bytes, shape=ChatRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_body(body, shape)
    return info.value


def test_valid_chat_keeps_unknown_fields_for_upstream() -> None:
    raw, req, unknown = decode_body(
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"vendor_flag":{"x":1},"temperature":1}', ChatRequest
    )
    assert req.model == "m"
    assert req.temperature == 1.0
    assert raw["vendor_flag"] == {"x": 1}
    assert unknown == 1


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b'{"messages":[{"role":"user","content":"x"}]}', "model", "missing_required_parameter"),
        (b'{"model":5,"messages":[]}', "model", "invalid_type"),
        (b'{"model":"m"}', "messages", "missing_required_parameter"),
        (b'{"model":"m","messages":"hi"}', "messages", "invalid_type"),
        (b'{"model":"m","messages":[]}', "messages", "invalid_value"),
        (b'{"model":"m","messages":[{"content":"x"}]}', "messages[0].role", "missing_required_parameter"),
        (b'{"model":"m","messages":[{"role":"wizard","content":"x"}]}', "messages[0].role", "invalid_value"),
        (b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}', "max_tokens", "invalid_type"),
        (b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}', "max_tokens", "invalid_value"),
        (b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":5}', "temperature", "invalid_value"),
        (b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}', "stream", "invalid_type"),
        (b'{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}', "n", "invalid_value"),
    ],
)
def test_bad_chat_bodies_name_the_param(body: bytes, param: str, code: str) -> None:
    error = _err(body)
    assert error.status == 400
    assert error.param == param
    assert error.code == code


@pytest.mark.parametrize("body", [b"", b"{bad", b"[1,2]", b'"text"', b"\xff\xfe"])
def test_not_a_json_object(body: bytes) -> None:
    error = _err(body)
    assert error.code == "invalid_json"
    assert error.status == 400


def test_error_message_does_not_echo_prompt_text() -> None:
    error = _err(b'{"model":"m","messages":[{"role":"user","content":"my secret plan"}],"top_p":7}')
    assert "secret plan" not in error.message


def test_completion_prompt_shapes() -> None:
    for prompt in (b'"hi"', b'["a","b"]', b"[1,2,3]", b"[[1,2],[3]]"):
        _, req, _ = decode_body(b'{"model":"m","prompt":' + prompt + b"}", CompletionRequest)
        assert req.prompt
    assert _err(b'{"model":"m","prompt":{}}', CompletionRequest).param == "prompt"


def test_embedding_input_required() -> None:
    assert _err(b'{"model":"m"}', EmbeddingRequest).param == "input"
    _, req, _ = decode_body(b'{"model":"m","input":["a","b"],"encoding_format":"float"}', EmbeddingRequest)
    assert req.input == ["a", "b"]
