"""Prompt-injection screening of tool results and retrieved text: heuristics, not a classifier.

Text a tool returned or a retriever fetched came from outside the conversation;
an attacker who controls it may write instructions in it for the model. This
guardrail scores such text against a short list of well-known phrasings, each
with a weight, and flags it when the score reaches the configured threshold:
overriding instructions ("ignore all previous instructions"), extracting the
system prompt, role-play jailbreaks ("you are now DAN"), chat-template markers
smuggled into data, invisible characters (zero-width, bidi controls, Unicode
tag characters), and base64 blobs that decode to such instructions. It is a
tripwire for the common attacks, easy to evade for a determined one: pair it
with a classifier deployment (``kind: moderation``) where that matters. Only
tool results and retrieved content are screened; the user's own prompt is not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Sequence
from concurrent.futures import Executor

from core.config_guardrails import PromptInjection
from policies.guardrails_types import Text, Verdict, allowed

_I = re.IGNORECASE
# (category, weight, pattern): a category's weight counts once per text however often it matches.
_RULES: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    (
        "instruction_override",
        1.0,
        re.compile(
            r"\b(ignore|disregard|forget|override|skip)\b[\s\w,]{0,30}?\b(previous|prior|above|earlier|preceding|all|your|the)\b"
            r"[\s\w,]{0,20}?\b(instructions?|prompts?|rules|directions|guidelines|context|messages?)\b",
            _I,
        ),
    ),
    ("new_instructions", 0.6, re.compile(r"\b(new|updated|real|actual)\s+(system\s+)?(instructions?|rules|task)\s*:", _I)),
    (
        "prompt_exfiltration",
        1.0,
        re.compile(
            r"\b(reveal|print|show|repeat|output|leak|tell me|what (is|are))\b[\s\w,]{0,30}?\b(system|initial|hidden|original)\s+"
            r"(prompt|instructions?|message)",
            _I,
        ),
    ),
    (
        "role_play_jailbreak",
        1.0,
        re.compile(
            r"\b(you are now|act as|pretend (to be|you are)|from now on,? you)\b[\s\w,]{0,40}?"
            r"\b(DAN|jailbr(oken|eak)|unrestricted|unfiltered|no (rules|restrictions|limits)|developer mode)\b",
            _I,
        ),
    ),
    ("template_markers", 1.0, re.compile(r"<\|(im_start|im_end|system|endoftext|start_header_id)\|>|\[/?INST\]|<</?SYS>>", _I)),
    (
        "tool_hijack",
        0.5,
        re.compile(r"\b(call|invoke|execute|run)\s+the\s+\w+\s+(tool|function)\b.{0,40}\b(without|do not)\s+(asking|telling)", _I),
    ),
)
# Zero-width and bidi control characters, and Unicode tag characters (invisible, used to hide text).
_HIDDEN = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")
_HIDDEN_MIN = 3
_HIDDEN_WEIGHT = 0.6
_BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
_BASE64_WEIGHT = 1.0
_MAX_BLOBS = 8
_SCREENED = frozenset({"tool_result", "retrieved"})
_INLINE_CHARS = 4096


def score(text: str) -> tuple[float, str | None]:
    """The text's injection score and its heaviest category (None when nothing matched)."""
    found = {category: weight for category, weight, pattern in _RULES if pattern.search(text)}
    if len(_HIDDEN.findall(text)) >= _HIDDEN_MIN:
        found["hidden_characters"] = _HIDDEN_WEIGHT
    if _encoded_instructions(text):
        found["encoded_instructions"] = _BASE64_WEIGHT
    if not found:
        return 0.0, None
    return sum(found.values()), max(found, key=lambda c: found[c])


def _encoded_instructions(text: str) -> bool:
    for n, blob in enumerate(_BASE64.finditer(text)):
        if n >= _MAX_BLOBS:
            return False
        try:
            decoded = base64.b64decode(blob.group() + "=" * (-len(blob.group()) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if any(pattern.search(decoded) for _, weight, pattern in _RULES if weight >= 1.0):
            return True
    return False


class PromptInjectionGuard:
    def __init__(self, config: PromptInjection, executor: Executor) -> None:
        self._name = config.name
        self._threshold = config.threshold
        self._retrieved = frozenset(config.retrieved_names)
        self._executor = executor

    @property
    def name(self) -> str:
        return self._name

    def _screened(self, t: Text) -> bool:
        return t.source in _SCREENED or (t.source == "prompt" and t.name in self._retrieved)

    def _find(self, texts: Sequence[Text]) -> str | None:
        for t in texts:
            if self._screened(t):
                points, category = score(t.text)
                if points >= self._threshold:
                    return category
        return None

    async def check(self, texts: Sequence[Text]) -> Verdict:
        if sum(len(t.text) for t in texts if self._screened(t)) > _INLINE_CHARS:
            category = await asyncio.get_running_loop().run_in_executor(self._executor, self._find, texts)
        else:
            category = self._find(texts)
        return allowed(self._name) if category is None else Verdict("blocked", self._name, f"prompt_injection.{category}")
