"""What every guardrail shares: the texts it reads, the verdict it gives, the protocols a guardrail follows.

A guardrail sees a request (``pre``) or a response (``post``) as a list of
``Text``s, each with where it sits in the body and what it is (``source``), and
answers with a ``Verdict``. During a stream (``stream``) it answers per piece of
text through a ``StreamGuard``. A verdict names the guardrail and a category
(``aws_access_key``, ``tool_not_allowed``, ``pattern_2``), never the text it
matched: verdicts go into errors, audit entries, metrics and the ledger.

A plugin's guardrail is any object with ``name`` and ``check`` (and ``stream``
for ``mode: stream``): the same shape as a built-in, so the pipeline cannot
tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

from core.errors import GatewayError, InvalidRequest

# What a text is:
#   prompt       system/developer/user/assistant content, instructions, completion prompts, embedding inputs
#   tool_result  a tool's output sent back (chat `role: tool`/`function`, Responses `function_call_output`)
#   retrieved    retrieved content (a chat message whose `name` marks it, Responses file search results)
#   tool_call    arguments of a tool call the model made (JSON text)
#   definition   prose of tool definitions and response schemas
#   tool_name    a tool the request offers or chooses (function name, or a built-in tool's type)
#   output       a model's answer (post and stream)
Source = Literal["prompt", "tool_result", "retrieved", "tool_call", "definition", "tool_name", "output"]
Outcome = Literal["allowed", "blocked", "warned"]

# Categories of a verdict that comes from a fault rather than a finding (fail_closed).
GUARDRAIL_ERROR = "guardrail_error"
GUARDRAIL_TIMEOUT = "guardrail_timeout"


class Text(msgspec.Struct, frozen=True):
    """One string of a request or a response: its path in the body, the string, what it is."""

    path: tuple[str | int, ...]
    text: str
    source: Source
    # The chat message's `name`, where it has one (how retrieved content is marked).
    name: str | None = None


class Verdict(msgspec.Struct, frozen=True):
    """A guardrail's answer. ``category`` says what was found; never the text that matched."""

    outcome: Outcome
    guardrail: str
    category: str | None = None

    @property
    def blocked(self) -> bool:
        return self.outcome == "blocked"

    @property
    def fault(self) -> bool:
        return self.category in (GUARDRAIL_ERROR, GUARDRAIL_TIMEOUT)


def allowed(guardrail: str) -> Verdict:
    return Verdict("allowed", guardrail)


class Guardrail(Protocol):
    """A guardrail for ``pre`` and ``post``: one verdict on a request's or a response's texts.

    ``check`` returns ``blocked`` for a finding (the configured ``action`` may
    turn it into ``warned``) and ``allowed`` otherwise; it may raise or hang:
    the caller bounds it by the guardrail's timeout and applies its ``on_error``.
    """

    @property
    def name(self) -> str: ...

    async def check(self, texts: Sequence[Text]) -> Verdict: ...


class StreamGuard(Protocol):
    """One stream of text (one choice's content, one tool call's arguments) as it arrives.

    ``feed`` takes the next piece and returns a verdict when the text so far
    shows a finding, else None. It is synchronous (it runs per chunk) and must
    do bounded work per call: a window of recent text, never the whole output.
    """

    def feed(self, delta: str) -> Verdict | None: ...


@runtime_checkable
class StreamingGuardrail(Protocol):
    """A guardrail that can also run during a stream (``mode: stream``)."""

    @property
    def name(self) -> str: ...

    async def check(self, texts: Sequence[Text]) -> Verdict: ...

    def stream(self) -> StreamGuard: ...


class GuardrailBlocked(InvalidRequest):
    """400 naming the guardrail and what it found, never the text."""

    code = "guardrail_blocked"

    def __init__(self, verdict: Verdict) -> None:
        what = f" ({verdict.category})" if verdict.category else ""
        super().__init__(f"The request was blocked by guardrail '{verdict.guardrail}'{what}.")
        self.verdict = verdict


class GuardrailUnavailable(GatewayError):
    """503: a ``fail_closed`` guardrail failed or timed out, so the request cannot go on unchecked."""

    status = 503
    type = "server_error"
    code = "guardrail_unavailable"

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"Guardrail '{verdict.guardrail}' could not check the request ({verdict.category}).")
        self.verdict = verdict


def verdict_error(verdict: Verdict) -> GatewayError:
    """The error a blocking verdict answers with: 503 for a guardrail's fault, 400 for a finding."""
    return GuardrailUnavailable(verdict) if verdict.fault else GuardrailBlocked(verdict)
