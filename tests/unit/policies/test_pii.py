"""PII detection and masking of requests: policies.pii, pii_engine, pii_recognizers."""

from __future__ import annotations

import copy
import json
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest

from policies import pii, pii_engine, pii_scan
from policies.pii import (
    BlockedForPii,
    PiiAnalyzerError,
    PiiPolicy,
    block_message,
    scan_request,
)
from policies.pii_engine import PiiEngine, resolve_overlaps
from policies.pii_scan import Finding, candidate_entities

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx3f9\nq8Zt0Lr2\n-----END RSA PRIVATE KEY-----"
POSITIVES = [
    ("EMAIL_ADDRESS", "write to jane.doe@example.org today", "jane.doe@example.org"),
    ("PHONE_NUMBER", "call +1 415-555-2671 after lunch", "+1 415-555-2671"),
    ("PHONE_NUMBER", "office: 020 7946 0958 (London)", "020 7946 0958"),
    ("CREDIT_CARD", "card 4111 1111 1111 1111 expires soon", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "pay with 5500-0000-0000-0004 please", "5500-0000-0000-0004"),
    ("IBAN_CODE", "IBAN GB82 WEST 1234 5698 7654 32 for rent", "GB82 WEST 1234 5698 7654 32"),
    ("IBAN_CODE", "to DE89370400440532013000 by Friday", "DE89370400440532013000"),
    ("IP_ADDRESS", "the host 192.168.10.42 is down", "192.168.10.42"),
    ("IP_ADDRESS", "ping 2001:db8:85a3::8a2e:370:7334 now", "2001:db8:85a3::8a2e:370:7334"),
    ("SECRET", "use sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z here", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"),
    ("SECRET", "key sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe", "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"),
    ("SECRET", "aws AKIAIOSFODNN7EXAMPLE in env", "AKIAIOSFODNN7EXAMPLE"),
    ("SECRET", "gh ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5 x", "ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5"),
    ("SECRET", "slack xoxb-1234567890-abcdefGHIJ done", "xoxb-1234567890-abcdefGHIJ"),
    ("SECRET", f"Authorization: Bearer {JWT}", JWT),
    ("SECRET", f"my key:\n{PEM}\nthanks", PEM),
    ("SECRET", 'config {"api_key": "9f8e7d6c5b4a39281706f5e4d3c2b1a0"}', "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ("SECRET", "export DB_PASSWORD=Tr0ub4dor&3xYz!9q2w", "Tr0ub4dor&3xYz!9q2w"),
]
NEGATIVES = [
    ("CREDIT_CARD", "order 4111 1111 1111 1112 shipped"),  # fails Luhn
    ("IBAN_CODE", "ref GB83 WEST 1234 5698 7654 32 noted"),  # wrong check digits
    ("IP_ADDRESS", "version 999.1.1.1 released"),
    ("EMAIL_ADDRESS", "ping me @here or at name@localhost"),
    ("SECRET", "we compared sk-learn-model-comparison-notes yesterday"),
    ("SECRET", "set api_key=changeme-changeme-changeme in dev"),
    ("PHONE_NUMBER", "in 2024 we shipped 3 releases and fixed 120 bugs"),
]
ALL = {e: 0.5 for e in pii_scan.SUPPORTED_ENTITIES}


def analyze(text: str, scores: Mapping[str, float] = ALL) -> list[Finding]:
    return pii_engine.get_engine().analyze([(text, scores)])[0]


@pytest.mark.parametrize(("entity", "text", "value"), POSITIVES)
def test_detects_each_pattern_entity(entity: str, text: str, value: str) -> None:
    assert entity in candidate_entities(text, [entity])
    found = [text[f.start : f.end] for f in analyze(text, {entity: 0.5})]
    assert found == [value]


@pytest.mark.parametrize(("entity", "text"), NEGATIVES)
def test_clear_negatives(entity: str, text: str) -> None:
    assert analyze(text, {entity: 0.5}) == []


def test_ner_finds_people_and_places_with_the_offline_model() -> None:
    text = "Yesterday John Smith flew from Berlin to Lisbon to meet Maria Garcia."
    found = {(f.entity, text[f.start : f.end]) for f in analyze(text, {"PERSON": 0.5, "LOCATION": 0.5})}
    assert {("PERSON", "John Smith"), ("PERSON", "Maria Garcia"), ("LOCATION", "Berlin")} <= found
    # Only the NER component is loaded: no parser, tagger or lemmatizer.
    ner = pii_engine.get_engine()._ner
    assert ner is not None and ner.engine.get_nlp("en").pipe_names == ["ner"]


def test_loading_and_analysing_never_touch_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    engine = PiiEngine()
    text = "Mail alice@example.co.uk about Paris."
    findings = engine.analyze([(text, {"EMAIL_ADDRESS": 0.5, "LOCATION": 0.5})])[0]
    assert [text[f.start : f.end] for f in findings] == ["alice@example.co.uk", "Paris"]


def test_phone_min_digits_follow_the_phonenumbers_metadata() -> None:
    import phonenumbers
    from phonenumbers import PhoneMetadata

    def shortest(md: Any) -> int:
        return int(min(n for n in md.general_desc.possible_length if n > 0))

    def metadata(cc: int) -> Any:
        region = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[cc][0]
        return PhoneMetadata.metadata_for_nongeo_region(cc) if region == "001" else PhoneMetadata.metadata_for_region(region)

    def inserted(md: Any) -> int:  # digits a national-prefix transform rule adds
        return sum(c.isdigit() for c in (md.national_prefix_transform_rule or "").replace("\\1", "").replace("\\2", ""))

    intl = min(
        len(str(cc)) + shortest(md) - inserted(md)
        for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE
        if (md := metadata(cc)).general_desc.possible_length
    )
    for region in pii_scan.PHONE_REGIONS:
        md = PhoneMetadata.metadata_for_region(region)
        assert inserted(md) == 0
        expected = min(shortest(md), intl)
        assert pii_scan.PHONE_MIN_DIGITS.get(region, pii_scan.PHONE_DEFAULT_MIN_DIGITS) == expected


WHOLE_TEXT_SAMPLES = [
    "+1 (415) 555-2671, 020 7946 0958 and +49 30 901820 or 01 23 45 67 89",
    "India 98765 43210, Brazil (11) 91234-5678, Israel 03-1234567, DE short 1640.",
    "fax 415.555.2672 at 12:30; not 1.2 to 1.5",
    "a@b.co, x.y+tag@mail.example.com; host 10.0.0.1, fe80::1ff:fe23:4567:890a%eth0 and ::ffff:10.1.2.3",
]


@pytest.mark.parametrize("text", WHOLE_TEXT_SAMPLES)
def test_windowed_recognizers_find_what_whole_text_scans_find(text: str) -> None:
    from presidio_analyzer.predefined_recognizers import IpRecognizer, PhoneRecognizer

    from policies.pii_recognizers import OfflineEmailRecognizer

    ours = analyze(text, {"PHONE_NUMBER": 0.0, "EMAIL_ADDRESS": 0.0, "IP_ADDRESS": 0.0})
    whole = PhoneRecognizer().analyze(text, ["PHONE_NUMBER"]) + OfflineEmailRecognizer().analyze(text, ["EMAIL_ADDRESS"])
    whole += IpRecognizer().analyze(text, ["IP_ADDRESS"])
    assert whole
    for r in whole:
        assert any(f.entity == r.entity_type and f.start <= r.start and f.end >= r.end for f in ours), r


def test_phone_extension_apart_from_its_number_leaves_the_number_found() -> None:
    text = "call +1 415 555 2671 ext. 123 today"
    assert [text[f.start : f.end] for f in analyze(text, {"PHONE_NUMBER": 0.5})] == ["+1 415 555 2671"]


def test_resolve_overlaps_keeps_highest_score_then_longest() -> None:
    a, b, c = Finding("PERSON", 0, 10, 0.85), Finding("EMAIL_ADDRESS", 5, 20, 1.0), Finding("PHONE_NUMBER", 21, 30, 0.6)
    d = Finding("SECRET", 21, 35, 0.6)
    assert resolve_overlaps([a, b, c, d]) == [b, d]


def test_thresholds_are_respected() -> None:
    text = "call +1 415-555-2671 after lunch"
    assert analyze(text, {"PHONE_NUMBER": 0.6})
    assert analyze(text, {"PHONE_NUMBER": 0.7}) == []


async def test_policy_thresholds_per_entity_and_global() -> None:
    body = {"messages": [{"role": "user", "content": "call +1 415-555-2671 or a@example.com"}]}
    strict_phone = PiiPolicy(action="block", thresholds={"PHONE_NUMBER": 0.9})
    assert (await scan_request("chat", body, strict_phone)).counts == {"EMAIL_ADDRESS": 1}
    high = PiiPolicy(action="block", score_threshold=0.95, thresholds={"PHONE_NUMBER": 0.5})
    assert (await scan_request("chat", body, high)).counts == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}


def test_policy_rejects_unknown_entities_and_bad_thresholds() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown PII entities"):
        msgspec.convert({"action": "redact", "entities": ["EMAIL", "PERSON"]}, PiiPolicy)
    with pytest.raises(msgspec.ValidationError, match="between 0 and 1"):
        msgspec.convert({"score_threshold": 1.5}, PiiPolicy)
    with pytest.raises(msgspec.ValidationError, match="thresholds"):
        msgspec.convert({"entities": ["PERSON"], "thresholds": {"EMAIL_ADDRESS": 0.4}}, PiiPolicy)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"acton": "redact"}, PiiPolicy)


# --- requests ----------------------------------------------------------------------

EMAIL, PHONE, KEY = "jane.doe@example.org", "+1 415-555-2671", "AKIAIOSFODNN7EXAMPLE"
CHAT: dict[str, Any] = {
    "model": "m",
    "temperature": 0.2,
    "messages": [
        {"role": "system", "content": f"The user is Jane, {EMAIL}."},
        {"role": "developer", "content": [{"type": "text", "text": f"Key {KEY} is hers."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"Call me at {PHONE} or mail {EMAIL}."},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "mail", "arguments": json.dumps({"to": EMAIL, "cc": [PHONE]})}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": f"sent to {EMAIL}"},
        {"role": "assistant", "content": "ok", "function_call": {"name": "f", "arguments": json.dumps({"pem": PEM})}},
    ],
}
PATTERNS = list(pii_scan.PATTERN_ENTITIES)


@pytest.mark.parametrize("action", ["redact", "mask_and_restore"])
async def test_masks_every_chat_text_and_leaves_the_original_alone(action: str) -> None:
    original = copy.deepcopy(CHAT)
    result = await scan_request("chat", CHAT, PiiPolicy(action=action, entities=PATTERNS))  # type: ignore[arg-type]
    assert CHAT == original
    assert result.found and result.counts == {"EMAIL_ADDRESS": 4, "PHONE_NUMBER": 2, "SECRET": 2}
    wire = msgspec.json.encode(result.body).decode()
    for value in (EMAIL, PHONE, KEY, "MIIEowIBAAKCAQEAx3f9", "415-555-2671"):
        assert value not in wire and json.dumps(value)[1:-1] not in wire
    messages = result.body["messages"]
    assert messages[0]["content"] == "The user is Jane, <EMAIL_ADDRESS_1>."
    assert messages[1]["content"][0]["text"] == "Key <SECRET_1> is hers."
    assert messages[2]["content"][0]["text"] == "Call me at <PHONE_NUMBER_1> or mail <EMAIL_ADDRESS_1>."
    assert messages[2]["content"][1] == CHAT["messages"][2]["content"][1]
    assert json.loads(messages[3]["tool_calls"][0]["function"]["arguments"]) == {"to": "<EMAIL_ADDRESS_1>", "cc": ["<PHONE_NUMBER_1>"]}
    assert messages[4]["content"] == "sent to <EMAIL_ADDRESS_1>"
    assert json.loads(messages[5]["function_call"]["arguments"]) == {"pem": "<SECRET_2>"}
    assert result.body["temperature"] == 0.2 and result.body["model"] == "m"
    if action == "redact":
        assert result.restorer is None
    else:
        assert result.restorer is not None
        assert result.restorer.restore_text("<EMAIL_ADDRESS_1> <SECRET_2>") == f"{EMAIL} {PEM}"


@pytest.mark.parametrize(
    ("kind", "body", "path"),
    [
        ("completion", {"prompt": f"mail {EMAIL}"}, ("prompt",)),
        ("completion", {"prompt": ["nothing here", f"mail {EMAIL}"]}, ("prompt", 1)),
        ("embedding", {"input": f"mail {EMAIL}"}, ("input",)),
        ("embedding", {"input": [f"mail {EMAIL}", "plain"]}, ("input", 0)),
    ],
)
async def test_masks_completion_prompts_and_embedding_inputs(kind: str, body: dict[str, Any], path: tuple[Any, ...]) -> None:
    original = copy.deepcopy(body)
    result = await scan_request(kind, body, PiiPolicy(action="redact"))  # type: ignore[arg-type]
    assert body == original and result.counts == {"EMAIL_ADDRESS": 1}
    node: Any = result.body
    for key in path:
        node = node[key]
    assert node == "mail <EMAIL_ADDRESS_1>"
    assert EMAIL not in msgspec.json.encode(result.body).decode()


async def test_placeholders_are_numbered_per_type_and_reused_per_value() -> None:
    body = {"messages": [{"role": "user", "content": f"a@example.com, b@example.com, a@example.com, {PHONE}"}]}
    result = await scan_request("chat", body, PiiPolicy(action="mask_and_restore", entities=PATTERNS))
    assert result.body["messages"][0]["content"] == "<EMAIL_ADDRESS_1>, <EMAIL_ADDRESS_2>, <EMAIL_ADDRESS_1>, <PHONE_NUMBER_1>"
    assert result.counts == {"EMAIL_ADDRESS": 3, "PHONE_NUMBER": 1}


@pytest.mark.parametrize("action", ["block", "restrict"])
async def test_block_and_restrict_count_but_leave_the_body(action: str) -> None:
    result = await scan_request("chat", CHAT, PiiPolicy(action=action))  # type: ignore[arg-type]
    assert result.found and result.body is CHAT and result.restorer is None
    assert result.counts["EMAIL_ADDRESS"] == 4


async def test_nothing_found_returns_the_same_body() -> None:
    body = {"messages": [{"role": "user", "content": "Summarise the meeting notes, please."}]}
    result = await scan_request("chat", body, PiiPolicy(action="redact", entities=PATTERNS))
    assert result.body is body and not result.found and result.counts == {}


class SpyEngine:
    """Records what reaches the analyzer, then delegates to the real one (or fails)."""

    def __init__(self, real: PiiEngine | None, error: Exception | None = None) -> None:
        self.real = real
        self.error = error
        self.calls: list[list[tuple[str, Mapping[str, float]]]] = []
        self.threads: list[str] = []
        self.scopes: list[str] = []

    def analyze(self, jobs: Sequence[tuple[str, Mapping[str, float]]], ner_scope: str = "cased") -> list[list[Finding]]:
        self.calls.append(list(jobs))
        self.scopes.append(ner_scope)
        self.threads.append(threading.current_thread().name)
        if self.error is not None:
            raise self.error
        assert self.real is not None
        return self.real.analyze(jobs, ner_scope)  # type: ignore[arg-type]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SpyEngine:
    engine = SpyEngine(pii_engine.get_engine())
    monkeypatch.setattr(pii_engine, "get_engine", lambda: engine)
    return engine


async def test_prefilter_skips_the_analyzer_for_texts_that_cannot_match(spy: SpyEngine) -> None:
    policy = PiiPolicy(action="redact", entities=["EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "SECRET"])
    body = {"messages": [{"role": "user", "content": "No addresses or numbers in here, just words."}]}
    assert (await scan_request("chat", body, policy)).counts == {}
    assert spy.calls == []
    body["messages"].append({"role": "user", "content": f"but {EMAIL} here"})
    assert (await scan_request("chat", body, policy)).counts == {"EMAIL_ADDRESS": 1}
    # Only the text that could match went to the analyzer, for the entity it could hold, off the loop.
    assert spy.calls == [[(f"but {EMAIL} here", {"EMAIL_ADDRESS": 0.5})]]
    assert spy.threads[0].startswith("pii") and spy.threads[0] != threading.current_thread().name


async def test_the_policy_chooses_where_ner_runs(spy: SpyEngine) -> None:
    body = {"messages": [{"role": "user", "content": "Forward it to Maria Garcia in Lisbon."}]}
    for scope in ("cased", "full"):
        result = await scan_request("chat", body, PiiPolicy(action="redact", entities=["PERSON", "LOCATION"], ner_scope=scope))
        assert result.counts == {"PERSON": 1, "LOCATION": 1}
    assert spy.scopes == ["cased", "full"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"action": "redact", "ner_scope": "sometimes"}, PiiPolicy)


async def test_large_requests_are_filtered_in_the_pool_and_still_skip_the_analyzer(spy: SpyEngine) -> None:
    policy = PiiPolicy(action="redact", entities=["EMAIL_ADDRESS", "SECRET"])
    words = "plain words only " * 2000
    body = {"messages": [{"role": "user", "content": words}]}
    assert (await scan_request("chat", body, policy)).body is body
    assert spy.calls == []
    body["messages"].append({"role": "user", "content": f"{words} {EMAIL}"})
    result = await scan_request("chat", body, policy)
    assert result.counts == {"EMAIL_ADDRESS": 1} and len(spy.calls) == 1 and len(spy.calls[0]) == 1


async def test_off_never_touches_the_analyzer(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> PiiEngine:
        raise AssertionError("analyzer used with action off")

    monkeypatch.setattr(pii_engine, "get_engine", forbidden)
    monkeypatch.setattr(pii, "_pool", forbidden)
    result = await scan_request("chat", CHAT, PiiPolicy())
    assert result.body is CHAT and result.counts == {} and not result.found


async def test_analyzer_failure_raises_pii_analyzer_error_without_text(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = SpyEngine(None, error=ValueError(f"cannot parse {EMAIL}"))
    monkeypatch.setattr(pii_engine, "get_engine", lambda: engine)
    with pytest.raises(PiiAnalyzerError) as caught:
        await scan_request("chat", CHAT, PiiPolicy(action="redact"))
    assert EMAIL not in str(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__
    assert caught.value.status == 503 and caught.value.code == "pii_analyzer_unavailable"


def test_block_message_names_types_and_counts_never_values() -> None:
    message = block_message({"PHONE_NUMBER": 1, "EMAIL_ADDRESS": 2})
    assert message == "The request contains personal data that policy does not allow: EMAIL_ADDRESS (2), PHONE_NUMBER (1)."
    error = BlockedForPii({"EMAIL_ADDRESS": 2})
    assert error.status == 400 and error.code == "pii_blocked" and "EMAIL_ADDRESS (2)" in error.message


async def test_block_message_from_a_scan_holds_no_values() -> None:
    result = await scan_request("chat", CHAT, PiiPolicy(action="block"))
    message = block_message(result.counts)
    for value in (EMAIL, PHONE, KEY, "Jane"):
        assert value not in message


def test_phone_punctuation_matches_the_library() -> None:
    import re

    from phonenumbers.phonenumberutil import _VALID_PUNCTUATION

    ours = re.compile(f"[{pii_scan.PHONE_PUNCTUATION}]")
    theirs = re.compile(f"[{_VALID_PUNCTUATION}]", re.IGNORECASE)
    assert [c for c in map(chr, range(0x10000)) if bool(ours.match(c)) != bool(theirs.match(c))] == []


def test_number_lists_do_not_wake_the_phone_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    import phonenumbers

    windows: list[str] = []
    real = phonenumbers.PhoneNumberMatcher

    def counting(text: str, region: str, **kwargs: Any) -> Any:
        windows.append(text)
        return real(text, region, **kwargs)

    monkeypatch.setattr(phonenumbers, "PhoneNumberMatcher", counting)
    # Separators a number cannot hold split the list into clusters of at most three digits.
    table = ",".join(str(n) for n in range(1000)) + "\n" + "\n".join(f"{n}: {n * 7}; {n}" for n in range(100))
    assert analyze(table + " call +1 415-555-2671", {"PHONE_NUMBER": 0.5})
    # Only the real number's cluster reached the matcher.
    assert windows and all("415-555-2671" in w for w in windows)


async def test_preload_for_pattern_entities_leaves_the_nlp_model_unloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = PiiEngine()
    monkeypatch.setattr(pii_engine, "get_engine", lambda: engine)
    await pii.preload(PiiPolicy(action="redact", entities=PATTERNS))
    assert engine._patterns is not None and engine._ner is None
    await scan_request("chat", CHAT, PiiPolicy(action="redact", entities=PATTERNS))
    assert engine._ner is None
    await pii.preload(PiiPolicy(action="block", entities=["PERSON"]))
    assert engine._ner is not None


async def test_concurrent_scans_share_the_engine_safely() -> None:
    import asyncio

    bodies = [{"messages": [{"role": "user", "content": f"Ask Maria Garcia in Lisbon, mail m{i}@example.com"}]} for i in range(12)]
    results = await asyncio.gather(*(scan_request("chat", b, PiiPolicy(action="redact")) for b in bodies))
    for i, result in enumerate(results):
        assert result.body["messages"][0]["content"] == "Ask <PERSON_1> in <LOCATION_1>, mail <EMAIL_ADDRESS_1>"
        assert f"m{i}@example.com" not in str(result.body)
