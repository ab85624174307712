"""How the pipeline ends a stream early, as a model would: a budget that cannot pay for more (``length``)."""

from __future__ import annotations

import msgspec

from budgets.tokens import count_prompt_tokens
from router.context import RequestContext
from serving.base import Usage

_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


def _envelope(ctx: RequestContext) -> dict[str, object]:
    chat = ctx.kind != "completion"  # a Responses request's renderer reads chat chunks
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{ctx.request_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(ctx.wall_started),
        "model": ctx.alias,
    }


def with_usage(ctx: RequestContext, events: list[bytes]) -> list[bytes]:
    """An OpenAI stream's closing ``events`` (ending with ``[DONE]``) with the usage chunk the client asked for.

    For a stream a guardrail ended, once it is settled (``ctx.usage`` is then
    the upstream's, or the count of what was generated). A surface with a
    renderer reports usage in its own closing events.
    """
    if not ctx.include_usage or ctx.usage is None or ctx.render is not None or not events or events[-1] != _DONE:
        return events
    usage = b"data: " + _encode({**_envelope(ctx), "choices": [], "usage": ctx.usage}) + b"\n\n"
    return [*events[:-1], usage, _DONE]


def cut_off(ctx: RequestContext, completion_tokens: int) -> list[bytes]:
    """End a stream the budget cannot pay for, as a model would at max_tokens."""
    ctx.status = 200
    ctx.error = "budget_cutoff"
    if ctx.reservation is not None:
        reservation = ctx.reservation
        # A bound is not a count: what is reported and billed is the count (of a short prompt).
        prompt = (
            reservation.prompt_estimate
            if reservation.prompt_exact or ctx.counter is None
            else count_prompt_tokens(ctx.kind, ctx.body, ctx.counter)
        )
        ctx.usage = Usage(prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens)
    chat = ctx.kind != "completion"
    envelope = _envelope(ctx)
    choice = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else {"index": 0, "text": "", "finish_reason": "length"}
    payloads = [_encode({**envelope, "choices": [choice]})]
    if ctx.include_usage and ctx.usage is not None:
        payloads.append(_encode({**envelope, "choices": [], "usage": ctx.usage}))
    render = ctx.render
    if render is not None:
        return [*(render.chunk(ctx, data) for data in payloads), render.end(ctx)]
    return [*(b"data: " + data + b"\n\n" for data in payloads), _DONE]
