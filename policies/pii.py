"""PII in requests: the policy, finding it in every text a request sends, and masking it.

``scan_request`` is the one entry point. With ``off`` it returns at once and
never loads the analyzer. Otherwise every text of the request (chat messages of
every role and their names, text parts, tool-call arguments, tool definitions'
prose, completion prompts, embedding inputs, a Responses body's instructions and
items: ``pii_fields``) goes through a cheap pre-filter, and only texts that could hold a
requested entity are analysed, in a small thread pool so the loop never blocks
(requests over 16 KiB of text are pre-filtered in the pool too). Findings become typed, numbered placeholders (``<EMAIL_ADDRESS_1>``; the
same value keeps its placeholder within a request) in a new body; the caller's
body is never modified. Only entity types and counts leave this module: no value
is logged or put in a message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgspec

from core.errors import GatewayError, InvalidRequest
from policies import pii_engine, pii_scan
from policies.pii_fields import chat_strings, responses_strings
from policies.pii_restore import Restorer
from policies.pii_scan import Finding

Kind = Literal["chat", "completion", "embedding", "responses"]
Action = Literal["off", "redact", "mask_and_restore", "block", "restrict"]
DEFAULT_ENTITIES = (*pii_scan.PATTERN_ENTITIES, *pii_scan.NER_ENTITIES)
_T = TypeVar("_T")


class PiiPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to look for and what to do when it is found.

    ``block`` refuses the request, ``restrict`` lets only self-hosted deployments
    see it; both leave the body as it is. ``on_analyzer_error`` is for the caller:
    when ``scan_request`` raises ``PiiAnalyzerError``, ``fail_closed`` refuses the
    request and ``restrict`` treats it as containing PII.
    """

    action: Action = "off"
    entities: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ENTITIES))
    score_threshold: float = 0.5
    thresholds: dict[str, float] = msgspec.field(default_factory=dict)
    on_analyzer_error: Literal["fail_closed", "restrict"] = "fail_closed"
    # Text beyond this many characters is refused rather than scanned: scanning
    # cost grows with the text, and an unscanned remainder must not go out.
    max_scan_chars: int = 262_144
    # Where the NER model runs: "cased" on windows around capitalised words
    # (text with no letter case, or mostly lower-case sentences, is scanned
    # whole), "full" on every text whole. See ``pii_scan.ner_windows``.
    ner_scope: pii_scan.NerScope = "cased"

    def __post_init__(self) -> None:
        if self.max_scan_chars < 1:
            raise ValueError("`max_scan_chars` must be at least 1")
        unknown = sorted(set(self.entities) - pii_scan.SUPPORTED_ENTITIES)
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; supported: {sorted(pii_scan.SUPPORTED_ENTITIES)}")
        if not set(self.thresholds) <= set(self.entities):
            raise ValueError("`thresholds` names entities that are not in `entities`")
        if not all(0.0 <= t <= 1.0 for t in (self.score_threshold, *self.thresholds.values())):
            raise ValueError("PII score thresholds must lie between 0 and 1")

    def min_scores(self) -> dict[str, float]:
        return {e: self.thresholds.get(e, self.score_threshold) for e in self.entities}


class PiiAnalyzerError(GatewayError):
    """The analyzer failed; the request must not go out unchecked."""

    status = 503
    type = "server_error"
    code = "pii_analyzer_unavailable"


class BlockedForPii(InvalidRequest):
    """400, naming the entity types found (never the values)."""

    code = "pii_blocked"

    def __init__(self, counts: Mapping[str, int]) -> None:
        super().__init__(block_message(counts))


def block_message(counts: Mapping[str, int]) -> str:
    """Entity types and counts, never values."""
    found = ", ".join(f"{entity} ({n})" for entity, n in sorted(counts.items()))
    return f"The request contains personal data that policy does not allow: {found}."


@dataclass(slots=True)
class ScanResult:
    counts: dict[str, int]
    body: dict[str, Any]
    restorer: Restorer | None = None
    found: bool = False


@dataclass(slots=True)
class _Text:
    """One string the request sends: where it sits, and where inside it when it is JSON."""

    path: tuple[str | int, ...]
    text: str
    json_path: tuple[str | int, ...] | None = None
    findings: list[Finding] = field(default_factory=list)


_Job = tuple[_Text, dict[str, float]]
_INLINE_PREFILTER_CHARS = 16 * 1024
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pii")
    return _executor


async def preload(policy: PiiPolicy) -> None:
    """Load what ``policy`` needs now (at start-up) rather than on its first request."""
    if policy.action != "off":
        await _run_engine(lambda: pii_engine.get_engine().load(policy.entities))


async def scan_request(kind: Kind, body: dict[str, Any], policy: PiiPolicy) -> ScanResult:
    """Find the policy's entities in every text of ``body`` and apply its action."""
    if policy.action == "off":
        return ScanResult(counts={}, body=body)
    min_scores = policy.min_scores()
    texts, decoded = _collect(kind, body)
    if sum(len(t.text) for t in texts) > policy.max_scan_chars:
        raise InvalidRequest(
            f"The request's text is longer than the {policy.max_scan_chars} characters this tenant's "
            "privacy policy scans; send it in smaller requests.",
            code="pii_scan_too_large",
        )

    # The pre-filter is cheap enough for the loop on small requests, where it
    # often spares the hop to the pool; large requests are filtered in the pool.
    planned = _plan(texts, min_scores) if sum(len(t.text) for t in texts) <= _INLINE_PREFILTER_CHARS else None
    if planned == []:
        return ScanResult(counts={}, body=body)

    def analyze() -> list[_Text]:
        jobs = planned if planned is not None else _plan(texts, min_scores)
        if jobs:
            findings = pii_engine.get_engine().analyze([(t.text, scores) for t, scores in jobs], policy.ner_scope)
            for (text, _), found in zip(jobs, findings):
                text.findings = found
        return [t for t, _ in jobs]

    scanned = await _run_engine(analyze)
    counts: dict[str, int] = {}
    for finding in (f for t in scanned for f in t.findings):
        counts[finding.entity] = counts.get(finding.entity, 0) + 1
    if not counts or policy.action in ("block", "restrict"):
        return ScanResult(counts=counts, body=body, found=bool(counts))
    new_body, mapping = _masked(body, scanned, decoded)
    restorer = Restorer(mapping) if policy.action == "mask_and_restore" else None
    return ScanResult(counts=counts, body=new_body, restorer=restorer, found=True)


def _plan(texts: list[_Text], min_scores: dict[str, float]) -> list[_Job]:
    """The texts worth analysing, each with the entities it could hold."""
    jobs = [(t, {e: min_scores[e] for e in pii_scan.candidate_entities(t.text, min_scores)}) for t in texts]
    return [(t, scores) for t, scores in jobs if scores]


async def _run_engine(work: Callable[[], _T]) -> _T:
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool(), work)
    except Exception as exc:  # noqa: BLE001  any analyzer failure must stop the request
        # The cause is left out: library messages may quote the analysed text.
        raise PiiAnalyzerError(f"PII analysis failed ({type(exc).__name__})") from None


# --- request shapes -----------------------------------------------------------------


def _collect(kind: Kind, body: dict[str, Any]) -> tuple[list[_Text], dict[tuple[str | int, ...], Any]]:
    """Every text ``body`` sends, and the decoded JSON of tool-call arguments by path."""
    texts: list[_Text] = []
    decoded: dict[tuple[str | int, ...], Any] = {}
    if kind in ("chat", "responses"):
        for path, value, is_json in chat_strings(body) if kind == "chat" else responses_strings(body):
            parsed = _json_or_none(value) if is_json else None
            if parsed is None:
                texts.append(_Text(path, value))
                continue
            decoded[path] = parsed
            texts.extend(_Text(path, leaf, json_path) for json_path, leaf in _json_strings(parsed, ()))
    else:
        key = "prompt" if kind == "completion" else "input"
        sent = body.get(key)
        if isinstance(sent, str):
            texts.append(_Text((key,), sent))
        elif isinstance(sent, list):
            texts.extend(_Text((key, i), v) for i, v in enumerate(sent) if isinstance(v, str))
    return texts, decoded


def _json_or_none(value: str) -> Any:
    try:
        parsed = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
    return parsed if isinstance(parsed, (dict, list, str)) else None


def _json_strings(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _json_strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_strings(v, (*path, i))


# --- masking --------------------------------------------------------------------------


def _masked(
    body: dict[str, Any], texts: list[_Text], decoded: dict[tuple[str | int, ...], Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of ``body`` with findings replaced, and the placeholder -> value mapping."""
    by_value: dict[tuple[str, str], str] = {}
    numbers: dict[str, int] = {}

    def placeholder(entity: str, value: str) -> str:
        if (entity, value) not in by_value:
            numbers[entity] = numbers.get(entity, 0) + 1
            by_value[(entity, value)] = f"<{entity}_{numbers[entity]}>"
        return by_value[(entity, value)]

    edits: dict[tuple[str | int, ...], str] = {}
    for text in texts:
        if not text.findings:
            continue
        masked = _replace(text.text, text.findings, placeholder)
        if text.json_path is None:
            edits[text.path] = masked
        else:
            decoded[text.path] = _set(decoded[text.path], text.json_path, masked)
            edits[text.path] = msgspec.json.encode(decoded[text.path]).decode()
    return _with_edits(body, edits), {p: value for (_, value), p in by_value.items()}


def _replace(text: str, findings: list[Finding], placeholder: Callable[[str, str], str]) -> str:
    out: list[str] = []
    at = 0
    for f in findings:
        out.append(text[at : f.start])
        out.append(placeholder(f.entity, text[f.start : f.end]))
        at = f.end
    out.append(text[at:])
    return "".join(out)


def _set(container: Any, path: tuple[str | int, ...], value: str) -> Any:
    if not path:
        return value
    *parents, last = path
    node = container
    for key in parents:
        node = node[key]
    node[last] = value
    return container


def _with_edits(body: dict[str, Any], edits: dict[tuple[str | int, ...], str]) -> dict[str, Any]:
    """Copy-on-write: containers on an edited path are copied, everything else is shared."""
    root = dict(body)
    copies: dict[tuple[str | int, ...], Any] = {(): root}
    for path, value in edits.items():
        node: Any = root
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in copies:
                original = node[path[depth - 1]]
                copies[prefix] = dict(original) if isinstance(original, dict) else list(original)
                node[path[depth - 1]] = copies[prefix]
            node = copies[prefix]
        node[path[-1]] = value
    return root
