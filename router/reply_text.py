"""The generated text of a whole answer that came without usage, for counting its tokens."""

from __future__ import annotations

import msgspec


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    text: str | None = None


class _Part(msgspec.Struct):
    text: str | None = None


class _Item(msgspec.Struct):
    """An output item of a Response (served by an upstream with the Responses API)."""

    content: list[_Part] | None = None
    arguments: str | None = None


class _Body(msgspec.Struct):
    choices: list[_Choice] = []
    output: list[_Item] = []


_body_decoder = msgspec.json.Decoder(_Body)


def completion_texts(body: bytes) -> list[str]:
    """Generated text of a response that came without usage, for counting."""
    try:
        parsed = _body_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return []
    out = []
    for choice in parsed.choices:
        if choice.message is not None and choice.message.content:
            out.append(choice.message.content)
        elif choice.text:
            out.append(choice.text)
    for item in parsed.output:
        out.extend(part.text for part in item.content or () if part.text)
        if item.arguments:
            out.append(item.arguments)
    return out
