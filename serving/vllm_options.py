"""The in-process vLLM engine's options; ``serving.vllm_engine`` re-exports them for the registry."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# vLLM's structured-output backends. "guidance" (llguidance) refuses every JSON
# Schema keyword it cannot enforce; "xgrammar" and "auto" may let some pass unenforced.
StructuredBackend = Literal["auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer"]
_COMPACT_BACKENDS = ("xgrammar", "guidance")


class VLLMOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # A local model directory (config, weights, tokenizer); nothing is downloaded.
    model_path: str
    # A tokenizer directory when it is not the model's own.
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # None takes the model's own context length.
    max_model_len: Annotated[int, msgspec.Meta(ge=16)] | None = None
    # Share of GPU memory for weights and KV cache. On a CPU host vLLM reads it as
    # a share of host RAM, so set kv_cache_space_gib there instead.
    gpu_memory_utilization: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9
    # Fixed KV cache size; takes precedence over gpu_memory_utilization.
    kv_cache_space_gib: Annotated[float, msgspec.Meta(gt=0)] | None = None
    tensor_parallel_size: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Pins this engine to one GPU. Applied as CUDA_VISIBLE_DEVICES for the engine
    # processes vLLM starts; it cannot move a CUDA context this process already has.
    gpu_index: Annotated[int, msgspec.Meta(ge=0)] | None = None
    enforce_eager: bool = False
    max_num_seqs: Annotated[int, msgspec.Meta(ge=1)] | None = None
    seed: int | None = None
    # generate: chat and completions. embed: the model runs as a pooling model and
    # serves embeddings only (a generative model is converted, last-token pooling).
    task: Literal["generate", "embed"] = "generate"
    # A vLLM tool parser (as `vllm serve --tool-call-parser`: hermes, llama3_json,
    # mistral, ...) that reads calls out of the text when tool_choice is auto.
    # None: the text comes back as content.
    tool_parser: str | None = None
    # Decodes response_format JSON and forced tool calls.
    structured_outputs_backend: StructuredBackend = "guidance"
    # JSON without free whitespace between tokens under those constraints; keeps a
    # weak model from looping on whitespace. Needs xgrammar or guidance.
    compact_json: bool = False

    def __post_init__(self) -> None:
        if self.gpu_index is not None and self.tensor_parallel_size > 1:
            raise ValueError("gpu_index pins one GPU; it cannot be combined with tensor_parallel_size > 1")
        if self.compact_json and self.structured_outputs_backend not in _COMPACT_BACKENDS:
            raise ValueError("compact_json needs structured_outputs_backend xgrammar or guidance")
        if self.task == "embed" and self.tool_parser is not None:
            raise ValueError("tool_parser applies to task generate, not embed")
