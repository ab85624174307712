"""vLLM ``RequestOutput`` --> OpenAI JSON: whole responses, stream chunks and usage.

Choice indexes follow OpenAI's rule for several prompts: prompt ``p`` with ``n``
choices owns indexes ``p * n`` to ``p * n + n - 1``. Usage is exact: prompt
tokens are the ids handed to the engine, completion tokens the ids it produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from core.errors import UpstreamError
from serving.base import (
    Completion,
    JsonObject,
    StreamChunk,
    Usage,
    make_usage,
    usage_json,
)
from serving.tool_call_text import ToolOutput, ToolStream, tool_finish_reason

if TYPE_CHECKING:
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

_encode = msgspec.json.Encoder().encode
# vLLM's own reason for cutting off a repetition loop; OpenAI knows only stop/length.
_FINISH_REASONS = {"stop": "stop", "length": "length", "repetition": "stop"}


@dataclass(slots=True, frozen=True)
class ResponseMeta:
    """What every response and chunk of one request repeats."""

    kind: Literal["chat", "completion"]
    response_id: str
    model: str
    created: int
    n: int
    # None when logprobs were not asked for.
    top_logprobs: int | None
    # How tool calls are read from chat text; None when the text is all content.
    tools: ToolOutput | None = None

    def header(self, chunk: bool) -> JsonObject:
        if self.kind == "chat":
            name = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            name = "text_completion"
        return {"id": self.response_id, "object": name, "created": self.created, "model": self.model}


def finish_reason(output: CompletionOutput) -> str | None:
    reason = output.finish_reason
    if reason is None:
        return None
    mapped = _FINISH_REASONS.get(str(reason))
    if mapped is None:
        # "abort" or "error": the engine dropped the request, there is no answer to give.
        raise UpstreamError(f"vLLM ended the request without an answer ({reason})")
    return mapped


def final_completion(meta: ResponseMeta, outputs: list[RequestOutput], prompt_tokens: int) -> Completion:
    """One whole response from the final output of every prompt."""
    choices: list[JsonObject] = []
    completion_tokens = 0
    cached = 0
    for prompt_index, request_output in enumerate(outputs):
        cached += request_output.num_cached_tokens or 0
        for output in request_output.outputs:
            completion_tokens += len(output.token_ids)
            choices.append(_final_choice(meta, prompt_index * meta.n + output.index, output))
    choices.sort(key=lambda choice: choice["index"])
    usage = make_usage(prompt_tokens, completion_tokens, cached)
    body = meta.header(chunk=False) | {"choices": choices, "usage": usage_json(usage)}
    return Completion(body=_encode(body), usage=usage)


def _final_choice(meta: ResponseMeta, index: int, output: CompletionOutput) -> JsonObject:
    reason = finish_reason(output)
    if meta.kind == "chat":
        message: JsonObject = {"role": "assistant", "content": output.text}
        if meta.tools is not None and reason is not None:
            message, called = meta.tools.message(output.text)
            reason = tool_finish_reason(reason, called)
        return {
            "index": index,
            "message": message,
            "logprobs": chat_logprobs(output, meta.top_logprobs),
            "finish_reason": reason,
        }
    logprobs = completion_logprobs(output, meta.top_logprobs, 0)[0]
    return {"index": index, "text": output.text, "logprobs": logprobs, "finish_reason": reason}


@dataclass(slots=True)
class StreamEncoder:
    """Turns delta outputs into OpenAI chunks and keeps the running usage."""

    meta: ResponseMeta
    prompt_tokens: int
    completion_tokens: int = 0
    _started: set[int] = field(default_factory=set)
    _cached: dict[int, int] = field(default_factory=dict)
    # Completions report each token's character offset in the choice's whole text.
    _offsets: dict[int, int] = field(default_factory=dict)
    _tool_streams: dict[int, ToolStream] = field(default_factory=dict)

    def feed(self, prompt_index: int, request_output: RequestOutput) -> list[StreamChunk]:
        self._cached[prompt_index] = request_output.num_cached_tokens or 0
        chunks: list[StreamChunk] = []
        for output in request_output.outputs:
            index = prompt_index * self.meta.n + output.index
            self.completion_tokens += len(output.token_ids)
            reason = finish_reason(output)
            if self.meta.kind == "chat":
                chunks.extend(self._chat_chunks(index, output, reason))
            elif output.text or reason or (self.meta.top_logprobs is not None and output.token_ids):
                chunks.append(self._text_chunk(index, output, reason))
        # One engine step's chunks reach the client in one write.
        for chunk in chunks[:-1]:
            chunk.batch_end = False
        return chunks

    def usage(self) -> Usage:
        return make_usage(self.prompt_tokens, self.completion_tokens, sum(self._cached.values()))

    def usage_chunk(self) -> StreamChunk:
        usage = self.usage()
        body = self.meta.header(chunk=True) | {"choices": [], "usage": usage_json(usage)}
        return StreamChunk(data=_encode(body), usage=usage, usage_only=True)

    def _chat_chunks(self, index: int, output: CompletionOutput, reason: str | None) -> list[StreamChunk]:
        chunks: list[StreamChunk] = []
        if index not in self._started:
            self._started.add(index)
            chunks.append(self._chat_chunk(index, {"role": "assistant", "content": ""}, None, None))
        logprobs = chat_logprobs(output, self.meta.top_logprobs) if output.token_ids else None
        if self.meta.tools is not None:
            return chunks + self._tool_chunks(index, output, logprobs, reason)
        if output.text or logprobs is not None:
            chunks.append(self._chat_chunk(index, {"content": output.text}, logprobs, None, text=output.text))
        if reason is not None:
            chunks.append(self._chat_chunk(index, {}, None, reason))
        return chunks

    def _tool_chunks(
        self, index: int, output: CompletionOutput, logprobs: JsonObject | None, reason: str | None
    ) -> list[StreamChunk]:
        """Delta text --> content and tool-call pieces, as far as the choice's parser can tell yet."""
        assert self.meta.tools is not None
        if index not in self._tool_streams:
            self._tool_streams[index] = self.meta.tools.stream()
        stream = self._tool_streams[index]
        chunks: list[StreamChunk] = []
        for delta in (stream.feed(output.text, output.token_ids), stream.finish() if reason is not None else None):
            if delta is not None or logprobs is not None:
                delta = delta or {}
                chunks.append(self._chat_chunk(index, delta, logprobs, None, text=delta.get("content") or ""))
                logprobs = None
        if reason is not None:
            chunks.append(self._chat_chunk(index, {}, None, tool_finish_reason(reason, stream.called)))
        return chunks

    def _chat_chunk(
        self, index: int, delta: JsonObject, logprobs: JsonObject | None, reason: str | None, text: str = ""
    ) -> StreamChunk:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        body = self.meta.header(chunk=True) | {"choices": [choice]}
        return StreamChunk(data=_encode(body), text=text, finish_reason=reason)

    def _text_chunk(self, index: int, output: CompletionOutput, reason: str | None) -> StreamChunk:
        logprobs, self._offsets[index] = completion_logprobs(
            output, self.meta.top_logprobs, self._offsets.get(index, 0)
        )
        choice = {"index": index, "text": output.text, "logprobs": logprobs, "finish_reason": reason}
        body = self.meta.header(chunk=True) | {"choices": [choice]}
        return StreamChunk(data=_encode(body), text=output.text, finish_reason=reason)


# --- logprobs -----------------------------------------------------------------------


def _positions(output: CompletionOutput) -> list[tuple[Logprob | None, list[Logprob]]]:
    """Per generated token: its own logprob and the alternatives ordered by rank."""
    rows: list[tuple[Logprob | None, list[Logprob]]] = []
    for token_id, position in zip(output.token_ids, output.logprobs or [], strict=False):
        if position is None:
            rows.append((None, []))
            continue
        ranked = sorted((lp for lp in position.values() if lp.rank is not None), key=lambda lp: lp.rank or 0)
        rows.append((position.get(token_id), ranked))
    return rows


def _top(ranked: list[Logprob], count: int) -> list[Logprob]:
    return [lp for lp in ranked if lp.rank is not None and lp.rank <= count]


def _token(logprob: Logprob | None) -> str:
    return (logprob.decoded_token or "") if logprob is not None else ""


def _value(logprob: Logprob | None) -> float | None:
    return logprob.logprob if logprob is not None else None


def chat_logprobs(output: CompletionOutput, top: int | None) -> JsonObject | None:
    if top is None:
        return None
    content: list[JsonObject] = []
    for chosen, ranked in _positions(output):
        token = _token(chosen)
        alternatives = [
            {"token": _token(lp), "logprob": lp.logprob, "bytes": list(_token(lp).encode())} for lp in _top(ranked, top)
        ]
        content.append(
            {"token": token, "logprob": _value(chosen), "bytes": list(token.encode()), "top_logprobs": alternatives}
        )
    return {"content": content}


def completion_logprobs(output: CompletionOutput, top: int | None, offset: int) -> tuple[JsonObject | None, int]:
    """The legacy completions logprobs object and the text offset after it."""
    if top is None:
        return None, offset
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, Any]] = []
    offsets: list[int] = []
    for chosen, ranked in _positions(output):
        token = _token(chosen)
        tokens.append(token)
        values.append(_value(chosen))
        tops.append({_token(lp): lp.logprob for lp in _top(ranked, top)})
        offsets.append(offset)
        offset += len(token)
    body = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
    return body, offset
