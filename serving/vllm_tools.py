"""Tool calls the model chooses to make (``tool_choice`` auto), read by one of vLLM's tool parsers.

The deployment names the parser (``VLLMOptions.tool_parser``, as ``vllm serve
--tool-call-parser``): ``hermes``, ``llama3_json``, ``mistral`` and the rest of
``vllm.tool_parsers``. Each request gets fresh parser instances, one per choice,
because streaming parsers keep state. Forced calls (``required`` or a named
function) never reach a parser: structured outputs decode them, and
``serving.tool_call_text.ForcedCalls`` reads them back.

vLLM is imported inside functions, so importing this module never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest
from serving.base import JsonObject
from serving.tool_call_text import ToolStream, assistant_message

if TYPE_CHECKING:
    from vllm.entrypoints.generate.base.protocol import DeltaMessage
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tokenizers import TokenizerLike
    from vllm.tool_parsers import ToolParser
    from vllm.tool_parsers.abstract_tool_parser import Tool


def load_tool_parser(name: str, tokenizer: TokenizerLike) -> type[ToolParser]:
    """The parser class for ``name``, tried once on the model's tokenizer so a misfit fails at start."""
    from vllm.tool_parsers import ToolParserManager

    try:
        parser_cls = ToolParserManager.get_tool_parser(name)
    except KeyError:
        known = ", ".join(ToolParserManager.list_registered())
        raise ValueError(f"unknown tool_parser {name!r}; vLLM has: {known}") from None
    try:
        parser_cls(tokenizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        # Parsers look up their marker tokens (e.g. <|python_tag|>) in the vocabulary.
        raise ValueError(f"tool_parser {name!r} does not fit this model: {exc}") from None
    return parser_cls


class ParsedToolCalls:
    """``ToolOutput`` backed by a vLLM tool parser, for one request."""

    def __init__(self, parser_cls: type[ToolParser], tokenizer: TokenizerLike, tools: list[JsonObject]) -> None:
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        try:
            request = ChatCompletionRequest.model_validate({"messages": [], "tools": tools, "tool_choice": "auto"})
        except ValidationError:
            raise InvalidRequest("'tools' are not valid function tools", param="tools") from None
        self._parser_cls = parser_cls
        self._tokenizer = tokenizer
        self.request = request
        # Parsers adjust the request they will read, e.g. Hermes keeps special tokens in the text.
        self.request = self._parser().adjust_request(request)  # type: ignore[assignment]

    @property
    def skip_special_tokens(self) -> bool:
        return bool(self.request.skip_special_tokens)

    def _parser(self) -> ToolParser:
        tools: list[Tool] = [*(self.request.tools or [])]
        return self._parser_cls(self._tokenizer, tools)

    def message(self, text: str) -> tuple[JsonObject, bool]:
        info = self._parser().extract_tool_calls(text, self.request)
        if not info.tools_called:
            return assistant_message(text, []), False
        calls = [call.model_dump() for call in info.tool_calls]
        return assistant_message(info.content, calls), bool(calls)

    def stream(self) -> ToolStream:
        return _ParsedStream(self._parser(), self.request)


class _ParsedStream:
    def __init__(self, parser: ToolParser, request: ChatCompletionRequest) -> None:
        self._parser = parser
        self._request = request
        self._text = ""
        self._token_ids: list[int] = []
        self._called = False

    @property
    def called(self) -> bool:
        return self._called

    def feed(self, text: str, token_ids: Sequence[int]) -> JsonObject | None:
        previous_text, previous_ids = self._text, self._token_ids
        self._text = previous_text + text
        self._token_ids = previous_ids + list(token_ids)
        message = self._parser.extract_tool_calls_streaming(
            previous_text, self._text, text, previous_ids, self._token_ids, token_ids, self._request
        )
        return self._delta(message)

    def finish(self) -> JsonObject | None:
        # A parser may have parsed arguments it has not streamed yet when the text ends.
        calls = self._parser.prev_tool_call_arr
        remaining = self._parser.get_remaining_unstreamed_args() if calls else ""
        if not remaining:
            return None
        return {"tool_calls": [{"index": len(calls) - 1, "function": {"arguments": remaining}}]}

    def _delta(self, message: DeltaMessage | None) -> JsonObject | None:
        if message is None:
            return None
        delta: dict[str, Any] = {}
        if message.content:
            delta["content"] = message.content
        if message.tool_calls:
            self._called = True
            delta["tool_calls"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
        return delta or None
