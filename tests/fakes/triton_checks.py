"""What the fake Triton refuses: LLM request shapes the real backends reject.

The real server cannot run here, so the fake holds every LLM request to what
Triton and its two LLM backends accept:

- input names, datatypes and shapes, from the vLLM backend's auto-completed
  config (``text_input`` BYTES [1], ``sampling_parameters`` BYTES [1], ...)
  and TensorRT-LLM's ensemble (the same names batched [1, 1], one tensor per
  sampling knob, ``guided_decoding_guide_type`` / ``guided_decoding_guide``);
  Triton itself refuses anything else, in its own words;
- the vLLM backend's ``sampling_parameters`` JSON, read as
  ``TritonSamplingParams.from_dict`` reads it: keys are ``SamplingParams``
  fields (plus ``lora_name`` and ``guided_decoding``), ``structured_outputs``
  is a JSON *string* of ``StructuredOutputsParams`` (the backend
  ``json.loads`` it), ``guided_decoding`` a string or an object of the same
  fields (plus ``backend``). ``from_dict`` swallows its error and returns
  None, so the backend fails with the message ``NONE_PARAMS`` below;
- TensorRT-LLM's guide: a known guide type, a guide wherever the type needs
  one, and for ``json_schema`` a JSON object.

Each check raises ``WireError``; the fake answers it in-band on a stream and
with the gRPC status on a unary call. A guide a check accepts is returned as
``Guide`` so the fake can answer under it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

# vLLM's SamplingParams fields a client may set, plus what Triton's backend adds.
SAMPLING_KEYS = frozenset(
    {
        "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k",
        "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
        "prompt_logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
        "include_stop_str_in_output", "logit_bias", "allowed_token_ids", "bad_words", "extra_args",
        "structured_outputs", "lora_name", "guided_decoding",
    }
)  # fmt: skip
STRUCTURED_KEYS = frozenset(
    {"json", "regex", "choice", "grammar", "json_object", "disable_any_whitespace", "disable_additional_properties",
     "whitespace_pattern", "structural_tag"}
)  # fmt: skip
_CONSTRAINT_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
_VLLM_INPUTS = {
    "text_input": "BYTES", "image": "BYTES", "stream": "BOOL", "sampling_parameters": "BYTES",
    "exclude_input_in_output": "BOOL", "return_finish_reason": "BOOL", "return_cumulative_logprob": "BOOL",
    "return_logprobs": "BOOL", "return_num_input_tokens": "BOOL", "return_num_output_tokens": "BOOL",
}  # fmt: skip
_TRTLLM_INPUTS = {
    "text_input": "BYTES", "max_tokens": "INT32", "stream": "BOOL", "exclude_input_in_output": "BOOL",
    "temperature": "FP32", "top_p": "FP32", "top_k": "INT32", "presence_penalty": "FP32",
    "frequency_penalty": "FP32", "random_seed": "UINT64", "stop_words": "BYTES", "bad_words": "BYTES",
    "end_id": "INT32", "pad_id": "INT32", "guided_decoding_guide_type": "BYTES", "guided_decoding_guide": "BYTES",
}  # fmt: skip
_GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
# What the vLLM backend answers when from_dict returned None.
NONE_PARAMS = "Error generating stream: 'NoneType' object has no attribute 'lora_name'"

Inputs = dict[str, tuple[str, list[int], np.ndarray]]


class WireError(Exception):
    def __init__(self, message: str, status: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Guide:
    """A constraint the fake decodes under: ``schema`` for JSON that it accepts, None for any JSON object."""

    schema: dict[str, Any] | None
    # Where it came from: structured_outputs, guided_decoding or trtllm.
    source: str


def check_llm(model: str, request_id: str, inputs: Inputs) -> Guide | None:
    """Raises ``WireError`` for what the backend would refuse; the request's guide, if any."""
    batched = "max_tokens" in inputs
    expected = _TRTLLM_INPUTS if batched else _VLLM_INPUTS
    for name, (datatype, shape, _) in inputs.items():
        if name not in expected:
            raise WireError(f"[request id: {request_id}] unexpected inference input '{name}' for model '{model}'")
        if datatype != expected[name]:
            raise WireError(
                f"[request id: {request_id}] inference input '{name}' data-type is '{datatype}',"
                f" but model '{model}' expects '{expected[name]}'"
            )
        if (len(shape) != 2 or shape[0] != 1) if batched else (shape != [1] and name != "image"):
            raise WireError(f"[request id: {request_id}] unexpected shape for input '{name}' for model '{model}'. Got {shape}")
    if "text_input" not in inputs:
        raise WireError(
            f"[request id: {request_id}] expected 1 inputs but got {len(inputs)} inputs for model '{model}'."
            f" Got input(s) {sorted(inputs)}, but missing required input(s) ['text_input']"
        )
    return _trtllm_guide(inputs) if batched else _vllm_guide(inputs)


def _first(inputs: Inputs, name: str) -> Any:
    return inputs[name][2].reshape(-1)[0]


def _vllm_guide(inputs: Inputs) -> Guide | None:
    if "sampling_parameters" not in inputs:
        return None
    try:
        params = json.loads(_first(inputs, "sampling_parameters"))
    except ValueError:
        raise WireError(NONE_PARAMS, grpc.StatusCode.INTERNAL) from None
    if not isinstance(params, dict) or not set(params) <= SAMPLING_KEYS:
        raise WireError(NONE_PARAMS, grpc.StatusCode.INTERNAL)
    guide = None
    if "guided_decoding" in params:
        value = params["guided_decoding"]
        guide = _structured(json.loads(value) if isinstance(value, str) else value, "guided_decoding", extra={"backend"})
    if "structured_outputs" in params:
        value = params["structured_outputs"]
        # from_dict calls json.loads on it: an object here is a TypeError.
        if not isinstance(value, str):
            raise WireError(NONE_PARAMS, grpc.StatusCode.INTERNAL)
        guide = _structured(json.loads(value), "structured_outputs", extra=set())
    return guide


def _structured(value: Any, source: str, extra: set[str]) -> Guide:
    if not isinstance(value, dict) or not set(value) <= STRUCTURED_KEYS | extra:
        raise WireError(NONE_PARAMS, grpc.StatusCode.INTERNAL)
    kinds = [kind for kind in _CONSTRAINT_KINDS if value.get(kind) not in (None, False)]
    if len(kinds) != 1:
        # vLLM's own check: exactly one kind of constraint per request.
        raise WireError("Error generating stream: You can only use one kind of structured outputs constraint", grpc.StatusCode.INTERNAL)
    if kinds[0] == "json_object":
        return Guide(None, source)
    if kinds[0] != "json":
        raise WireError(f"fake Triton: the gateway never sends a {kinds[0]} constraint", grpc.StatusCode.INTERNAL)
    schema = value["json"]
    schema = json.loads(schema) if isinstance(schema, str) else schema
    if not isinstance(schema, dict):
        raise WireError("Error generating stream: structured_outputs.json must be a JSON schema dictionary", grpc.StatusCode.INTERNAL)
    return Guide(schema, source)


def _trtllm_guide(inputs: Inputs) -> Guide | None:
    if "guided_decoding_guide_type" not in inputs:
        if "guided_decoding_guide" in inputs:
            raise WireError("fake Triton: guided_decoding_guide without guided_decoding_guide_type", grpc.StatusCode.INTERNAL)
        return None
    kind = _first(inputs, "guided_decoding_guide_type").decode()
    if kind not in _GUIDE_TYPES:
        # The backend maps unknown names to None, which the executor refuses.
        raise WireError(f"[TensorRT-LLM][ERROR] Assertion failed: unknown guide type {kind!r}", grpc.StatusCode.INTERNAL)
    if kind == "json":
        return Guide(None, "trtllm")
    if "guided_decoding_guide" not in inputs:
        raise WireError(
            "[TensorRT-LLM][ERROR] Assertion failed: The guide string must be provided unless using GuideType::kJSON.",
            grpc.StatusCode.INTERNAL,
        )
    if kind != "json_schema":
        raise WireError(f"fake Triton: the gateway never sends a {kind} guide", grpc.StatusCode.INTERNAL)
    try:
        schema = json.loads(_first(inputs, "guided_decoding_guide"))
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise WireError("[TensorRT-LLM][ERROR] xgrammar: invalid JSON schema", grpc.StatusCode.INTERNAL)
    return Guide(schema, "trtllm")
