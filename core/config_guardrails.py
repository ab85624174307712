"""Guardrail config: the ``guardrails:`` list a tenant or an alias carries.

Each entry names a ``kind`` (``tool_allowlist``, ``secrets``, ``deny_patterns``,
``moderation``, ``prompt_injection``, ``plugin``) and carries that kind's options,
plus what every guardrail has: when it runs (``mode``: ``pre`` on the request,
``post`` on a whole response, ``stream`` on a streamed response's text as it
arrives), what a finding does (``action``: ``block`` or ``warn``), what a fault
does (``on_error``: ``fail_open`` lets the request go on, ``fail_closed`` refuses
it) and how long it may take (``timeout_s``). Each kind accepts only its own
keys and the modes it supports; errors name the key. ``check_guardrails`` is for
the list as a whole (names unique within it).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from core.config_base import Strict

GuardrailName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")]
Mode = Literal["pre", "post", "stream"]
Action = Literal["block", "warn"]
OnError = Literal["fail_open", "fail_closed"]

# detect-secrets' detectors by class name (detect_secrets.plugins, 1.5.0). "all" means
# DEFAULT_SECRET_DETECTORS; the rest are noisy on prose and must be named to be used.
DEFAULT_SECRET_DETECTORS = (
    "ArtifactoryDetector",
    "AWSKeyDetector",
    "AzureStorageKeyDetector",
    "BasicAuthDetector",
    "CloudantDetector",
    "DiscordBotTokenDetector",
    "GitHubTokenDetector",
    "GitLabTokenDetector",
    "IbmCloudIamDetector",
    "IbmCosHmacDetector",
    "JwtTokenDetector",
    "MailchimpDetector",
    "NpmDetector",
    "OpenAIDetector",
    "PrivateKeyDetector",
    "PypiTokenDetector",
    "SendGridDetector",
    "SlackDetector",
    "SoftlayerDetector",
    "SquareOAuthDetector",
    "StripeDetector",
    "TelegramBotTokenDetector",
    "TwilioKeyDetector",
)
OPT_IN_SECRET_DETECTORS = ("Base64HighEntropyString", "HexHighEntropyString", "KeywordDetector", "IPPublicDetector")
SECRET_DETECTORS = frozenset((*DEFAULT_SECRET_DETECTORS, *OPT_IN_SECRET_DETECTORS))

# Deny patterns: bounded so one config cannot make every request scan for long.
MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 512
WindowChars = Annotated[int, msgspec.Meta(ge=16, le=8192)]
DEFAULT_WINDOW_CHARS = 256
Timeout = Annotated[float, msgspec.Meta(gt=0, le=60)]
Score = Annotated[float, msgspec.Meta(ge=0, le=1)]
# The regular-expression parser behind ``re`` (no public API gives the parse tree): for the nested-repeat check.
sre_parse: Any = importlib.import_module("re._parser")


class _Guardrail(Strict, tag_field="kind", kw_only=True):
    name: GuardrailName
    mode: Mode = "pre"
    action: Action = "block"
    on_error: OnError = "fail_closed"
    timeout_s: Timeout = 1.0

    # The modes this kind runs in.
    MODES: ClassVar[tuple[str, ...]] = ("pre",)

    def __post_init__(self) -> None:
        if self.mode not in self.MODES:
            raise ValueError(f"`mode` {self.mode!r} is not supported by kind {self.kind}; use one of {', '.join(self.MODES)}")

    @property
    def kind(self) -> str:
        return str(type(self).__struct_config__.tag)


class _Windowed(_Guardrail, kw_only=True):
    # How much of a stream's recent text a stream guard keeps in view: the longest match it can find.
    window_chars: WindowChars | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window_chars is not None and self.mode != "stream":
            raise ValueError("`window_chars` applies only to `mode: stream`")

    @property
    def window(self) -> int:
        return self.window_chars if self.window_chars is not None else DEFAULT_WINDOW_CHARS


class ToolAllowlist(_Guardrail, tag="tool_allowlist", kw_only=True):
    """Tools (function names; built-in tools by type) a request may offer or choose; any other is refused."""

    allow: list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]]


class Secrets(_Windowed, tag="secrets", kw_only=True):
    """Credentials found by detect-secrets' detectors: "all" or a list of detector class names."""

    MODES = ("pre", "post", "stream")
    detectors: Literal["all"] | list[str] = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.detectors, list):
            if not self.detectors:
                raise ValueError('`detectors` is empty; name detectors or use "all"')
            unknown = sorted(set(self.detectors) - SECRET_DETECTORS)
            if unknown:
                raise ValueError(f"`detectors` names unknown detectors {unknown}; known: {sorted(SECRET_DETECTORS)}")

    def detector_names(self) -> tuple[str, ...]:
        return DEFAULT_SECRET_DETECTORS if self.detectors == "all" else tuple(dict.fromkeys(self.detectors))


class DenyPatterns(_Windowed, tag="deny_patterns", kw_only=True):
    """Regular expressions (Python ``re``) a text must not match; a finding names the pattern's index."""

    MODES = ("pre", "post", "stream")
    patterns: list[str]
    ignore_case: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= len(self.patterns) <= MAX_PATTERNS:
            raise ValueError(f"`patterns` must hold 1 to {MAX_PATTERNS} patterns")
        for i, pattern in enumerate(self.patterns):
            _check_pattern(i, pattern)

    def compiled(self) -> tuple[re.Pattern[str], ...]:
        flags = re.IGNORECASE if self.ignore_case else 0
        return tuple(re.compile(p, flags) for p in self.patterns)


class Moderation(_Guardrail, tag="moderation", kw_only=True):
    """A deployment speaking OpenAI's ``/v1/moderations`` (a provider's, or a self-hosted classifier's).

    A text is flagged when a category in ``categories`` (every category when empty)
    scores at least ``threshold``; without a threshold, when the endpoint flags it.
    """

    MODES = ("pre", "post")
    deployment: GuardrailName
    # The model field sent to the endpoint (e.g. "omni-moderation-latest"); None leaves it out.
    model: str | None = None
    categories: list[str] = msgspec.field(default_factory=list)
    threshold: Score | None = None
    timeout_s: Timeout = 2.0


class PromptInjection(_Guardrail, tag="prompt_injection", kw_only=True):
    """Heuristic screening of tool results and retrieved text in a request for injected instructions."""

    # The score (sum of the matched heuristics' weights) at which text counts as an injection.
    threshold: Annotated[float, msgspec.Meta(gt=0, le=10)] = 1.0
    # Chat messages whose `name` is one of these carry retrieved content (RAG context) and are screened.
    retrieved_names: list[str] = msgspec.field(default_factory=lambda: ["retrieved"])


class PluginGuardrail(_Guardrail, tag="plugin", kw_only=True):
    """A guardrail a plugin provides, by the name it registers it under."""

    MODES = ("pre", "post", "stream")
    plugin: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


GuardrailConfig = ToolAllowlist | Secrets | DenyPatterns | Moderation | PromptInjection | PluginGuardrail


def check_guardrails(guardrails: Sequence[GuardrailConfig]) -> None:
    """What one entry cannot check alone: names unique within a list."""
    seen: set[str] = set()
    for g in guardrails:
        if g.name in seen:
            raise ValueError(f"`guardrails` names {g.name!r} twice; names must be unique within a list")
        seen.add(g.name)


def _check_pattern(index: int, pattern: str) -> None:
    where = f"`patterns[{index}]`"
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"{where} is longer than {MAX_PATTERN_CHARS} characters")
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise ValueError(f"{where} is not a valid regular expression: {exc.msg} at position {exc.pos}") from None
    if _nested_repeat(parsed, inside=False):
        raise ValueError(f"{where} repeats a repeated group (like `(a+)+`), which can take exponential time")
    if re.compile(pattern).match(""):
        raise ValueError(f"{where} matches the empty string, so it would match every text")


_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)


def _nested_repeat(parsed: Any, *, inside: bool) -> bool:
    """Whether an unbounded repeat holds a repeat of variable length (``(a+)+``, ``(a?)*``, ``(a{1,3})+``).

    Heuristic: alternations whose branches overlap (``(a|a)+``) go unseen; the
    guardrail's timeout bounds what gets through.
    """
    for op, arg in parsed:
        if op in _REPEATS:
            low, high, sub = arg
            if inside and low != high:
                return True
            if _nested_repeat(sub, inside=inside or high is sre_parse.MAXREPEAT):
                return True
        elif op is sre_parse.SUBPATTERN or op is sre_parse.ASSERT or op is sre_parse.ASSERT_NOT:
            if _nested_repeat(arg[-1], inside=inside):
                return True
        elif op is sre_parse.ATOMIC_GROUP:
            if _nested_repeat(arg, inside=inside):
                return True
        elif op is sre_parse.BRANCH or op is sre_parse.GROUPREF_EXISTS:
            branches = arg[1] if op is sre_parse.BRANCH else arg[1:]
            if any(b is not None and _nested_repeat(b, inside=inside) for b in branches):
                return True
    return False
