"""Presidio recognizers and the trimmed spaCy NER, set up to run fully offline.

Imported lazily by ``pii_engine`` (importing Presidio imports spaCy). Nothing here
downloads anything:

- e-mail validation uses tldextract's bundled public-suffix snapshot; Presidio's
  own ``EmailRecognizer`` calls ``tldextract.extract``, which fetches the list
  over the network on first use;
- the spaCy model must be an installed package; Presidio's engine would run
  ``spacy.cli.download`` for a missing one, ours raises instead (and never moves
  spaCy to a GPU, which Presidio's does when torch sees one).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import phonenumbers
import regex
import spacy
import tldextract
from presidio_analyzer import (
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngineProvider, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    SpacyRecognizer,
)
from spacy.language import Language
from spacy.tokens import Doc

from policies.pii_scan import (
    IP_ANCHOR,
    Finding,
    digit_clusters,
    ner_windows,
    phone_regions_for,
)

# Presidio's messages can quote the text being analysed (e.g. an IBAN candidate
# that failed validation); analyzer failures reach us as exceptions anyway.
logging.getLogger("presidio-analyzer").disabled = True

# Up to the next quote, space or bracket: passwords may hold any other character.
_SECRET_VALUE = r"[^\s\"'`,;<>()\[\]{}]{16,}"
_SECRET_KEYWORD = r"(?i:api[_-]?key|apikey|secret|token|passw(?:or)?d|pwd|credential|private[_-]?key)"


def looks_random(value: str) -> bool:
    """A key-like token: long, letters and digits mixed, >= 3 bits of entropy per character."""
    if len(value) < 16 or not any(c.isdigit() for c in value) or not any(c.isalpha() for c in value):
        return False
    return -sum(n / len(value) * math.log2(n / len(value)) for n in Counter(value).values()) >= 3.0


class SecretRecognizer(PatternRecognizer):
    """Case-sensitive patterns for one family of secrets, with an optional validator."""

    def __init__(self, name: str, patterns: list[Pattern], validator: Callable[[str], bool] | None) -> None:
        super().__init__(
            supported_entity="SECRET", name=name, patterns=patterns, global_regex_flags=regex.MULTILINE
        )
        self._validator = validator

    def validate_result(self, pattern_text: str) -> bool | None:
        return None if self._validator is None else self._validator(pattern_text)


def secret_recognizers() -> list[SecretRecognizer]:
    # Prefixes specific enough that a match is a secret by itself.
    prefixed = [
        Pattern("aws_access_key_id", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", 0.9),
        Pattern("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b", 0.9),
        Pattern("slack_token", r"\bxox[baprs]-[A-Za-z0-9-]{10,}", 0.9),
        Pattern("jwt", r"\beyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*", 0.9),
        # Up to the END line, or to the end of the text when the block is cut off.
        Pattern(
            "private_key_block",
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            1.0,
        ),
    ]
    # "sk-" and keyword assignments also start ordinary slugs and prose: the value must look random.
    random_valued = [
        Pattern("openai_anthropic_key", r"\bsk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", 0.9),
        # Bounded look-behinds keep the scan linear on long blobs (a look-behind is tried at every position).
        Pattern(
            "assigned_secret",
            rf"(?<={_SECRET_KEYWORD}[\w.-]{{0,32}}[\"']?\s{{0,4}}[:=]\s{{0,4}}[\"']?){_SECRET_VALUE}",
            0.9,
        ),
        Pattern("bearer_token", r"(?<=\b[Bb]earer\s{1,4})[A-Za-z0-9._~+/-]{16,}=*", 0.9),
    ]
    return [
        SecretRecognizer("SecretPrefixRecognizer", prefixed, None),
        SecretRecognizer("SecretValueRecognizer", random_valued, looks_random),
    ]


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail patterns, validated against the bundled suffix list only."""

    def __init__(self) -> None:
        super().__init__()
        self._tld = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    def validate_result(self, pattern_text: str) -> bool:
        return self._tld(pattern_text).fqdn != ""


class AnchoredRecognizer(LocalRecognizer):
    """Runs a pattern recognizer only in windows around what its matches must contain.

    Every match of ``inner`` contains a match of ``anchor`` and starts less than
    ``before`` characters ahead of it and ends less than ``after`` beyond it, so
    the windows hold every match a whole-text scan finds; long texts with few
    anchors are scanned at a fraction of the cost.
    """

    def __init__(self, inner: PatternRecognizer, anchor: str, before: int, after: int) -> None:
        super().__init__(supported_entities=inner.supported_entities, name=f"Anchored{type(inner).__name__}")
        self.inner = inner
        self.anchor = re.compile(anchor)
        self.before = before
        self.after = after

    def load(self) -> None:
        """The wrapped recognizer is already loaded."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        windows: list[tuple[int, int]] = []
        for m in self.anchor.finditer(text):
            low, high = max(0, m.start() - self.before), min(len(text), m.end() + self.after)
            if windows and low <= windows[-1][1]:
                windows[-1] = (windows[-1][0], high)
            else:
                windows.append((low, high))
        return [
            RecognizerResult(r.entity_type, low + r.start, low + r.end, r.score)
            for low, high in windows
            for r in self.inner.analyze(text[low:high], entities, None)
        ]


class RegionFilteredPhoneRecognizer(LocalRecognizer):
    """python-phonenumbers matching (numbers valid for a region), only where a number could be.

    A region's matcher parses every digit group of the text it is given, which
    makes whole-text matching the costliest recognizer by far. Instead each
    cluster of digits is matched on its own, in a window reaching to the
    neighbouring clusters (a number's digit blocks are at most four punctuation
    characters apart, so no number spans two clusters), only in the regions whose shortest
    valid number fits its digit count, and only until every digit of the cluster
    is inside a match. An extension ("ext. 12") is a cluster of its own, outside
    its number's span.

    A match is scored 0.6: VALID leniency already checks it against the region's
    numbering plan, and Presidio's 0.4 assumes its context enhancer, which needs
    the NLP pipeline the pattern path leaves out.
    """

    SCORE = 0.6
    # Room for an opening bracket or '+' before the digits, and for what the
    # matcher checks after them (an extension, a time-stamp suffix).
    BEFORE, AFTER = 10, 20

    def __init__(self) -> None:
        super().__init__(supported_entities=["PHONE_NUMBER"], name="PhoneRecognizer")

    def load(self) -> None:
        """Nothing to load: phonenumbers' metadata is imported with the package."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        clusters = digit_clusters(text)
        results: list[RecognizerResult] = []
        for i, (start, end, digits) in enumerate(clusters):
            low = max(start - self.BEFORE, clusters[i - 1][1] if i else 0)
            high = min(end + self.AFTER, clusters[i + 1][0] if i + 1 < len(clusters) else len(text))
            for s, e in self._match(text[low:high], phone_regions_for(digits)):
                results.append(RecognizerResult("PHONE_NUMBER", low + s, low + e, self.SCORE))
        return EntityRecognizer.remove_duplicates(results)

    @staticmethod
    def _match(window: str, regions: tuple[str, ...]) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        uncovered = list(window)
        for region in regions:
            for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.VALID):
                spans.append((match.start, match.end))
                uncovered[match.start : match.end] = " " * (match.end - match.start)
            # The window's only digits are its cluster's (see the class docstring).
            if not any(c.isdecimal() for c in uncovered):
                break
        return spans


class PatternRecognizers:
    """The pattern recognizers, grouped by the entity they find."""

    def __init__(self, by_entity: dict[str, list[EntityRecognizer]]) -> None:
        self.by_entity = by_entity

    def analyze(self, text: str, entities: Sequence[str]) -> list[Finding]:
        findings: list[Finding] = []
        for entity in entities:
            for recognizer in self.by_entity[entity]:
                # Pattern recognizers take no NLP artifacts: that is the point of this path.
                for r in recognizer.analyze(text, [entity], None):  # type: ignore[arg-type]
                    findings.append(Finding(r.entity_type, r.start, r.end, r.score))
        return findings


def build_pattern_recognizers() -> PatternRecognizers:
    email = OfflineEmailRecognizer()
    # Loads the suffix snapshot now rather than inside the first request.
    email.validate_result("warm-up@example.com")
    return PatternRecognizers(
        {
            # RFC 5321 caps the local part at 64 characters and the domain at 255.
            "EMAIL_ADDRESS": [AnchoredRecognizer(email, "@", before=65, after=256)],
            "PHONE_NUMBER": [RegionFilteredPhoneRecognizer()],
            "CREDIT_CARD": [CreditCardRecognizer()],
            "IBAN_CODE": [IbanRecognizer()],
            # An IPv6 address with a zone and a prefix length stays well within 64.
            "IP_ADDRESS": [AnchoredRecognizer(IpRecognizer(), IP_ANCHOR, before=64, after=64)],
            "SECRET": list(secret_recognizers()),
        }
    )


# --- NER -----------------------------------------------------------------------

# spaCy labels that become Presidio entities (Presidio's own mapping for these).
_NER_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION"}
# In the en_core_web_* pipelines NER has its own embedding layer; nothing else
# feeds it, so the other components are not even loaded.
_NOT_FOR_NER = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter", "morphologizer"]


class NerOnlySpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine, loading an installed model with only its NER component."""

    engine_name = "spacy_ner_only"

    def load(self) -> None:
        loaded: dict[str, Language] = {}
        for model in self.models:
            name = model["model_name"]
            if not spacy.util.is_package(name):
                raise RuntimeError(f"spaCy model package {name!r} is not installed")
            loaded[model["lang_code"]] = spacy.load(name, exclude=_NOT_FOR_NER)
        self.nlp = loaded  # type: ignore[assignment]  # the base class declares it as None
        # Unmapped labels (DATE, ORG, ...) are dropped instead of warned about per entity.
        labels = {label for nlp in loaded.values() for label in nlp.pipe_labels["ner"]}
        self.ner_model_configuration.labels_to_ignore = sorted(labels - _NER_LABELS.keys())

    def _doc_to_nlp_artifact(self, doc: Doc, language: str) -> NlpArtifacts:
        # Only SpacyRecognizer reads these artifacts, and only their entities and
        # scores: the per-token lemmas and offsets Presidio also collects (for
        # context words) are skipped.
        scores = self._get_scores_for_entities(doc)
        entities, scores = self._get_updated_entities(list(doc.ents), scores)
        return NlpArtifacts(entities=entities, tokens=doc, tokens_indices=[], lemmas=[], nlp_engine=self, language=language, scores=scores)


class NerRunner:
    """PERSON and LOCATION findings from the NER-only pipeline."""

    def __init__(self, engine: NerOnlySpacyNlpEngine) -> None:
        self.engine = engine
        self.entities = sorted(set(_NER_LABELS.values()))
        self.recognizer = SpacyRecognizer(supported_entities=self.entities)
        self.stop_words = frozenset(engine.get_nlp("en").Defaults.stop_words)

    def analyze(self, texts: list[str], windowed: bool = True) -> list[list[Finding]]:
        """Findings per text; ``windowed`` runs the model only on ``ner_windows`` of each."""
        pieces: list[tuple[str, tuple[int, int]]] = []  # (text, (index of the text, offset in it))
        for i, text in enumerate(texts):
            spans = ner_windows(text, self.stop_words) if windowed else None
            for start, end in spans if spans is not None else [(0, len(text))]:
                pieces.append((text[start:end], (i, start)))
        found: list[list[Finding]] = [[] for _ in texts]
        if not pieces:
            return found
        # The memory zone frees the strings and lexemes each text adds to the
        # vocabulary, which would otherwise grow for as long as the process runs.
        with self.engine.get_nlp("en").memory_zone():
            batch = self.engine.process_batch(cast("list[tuple[str, object]]", pieces), "en", batch_size=len(pieces), as_tuples=True)
            for piece, art, (i, offset) in cast("Iterator[tuple[str, NlpArtifacts, tuple[int, int]]]", batch):
                found[i] += [
                    Finding(r.entity_type, offset + r.start, offset + r.end, r.score)
                    for r in self.recognizer.analyze(piece, self.entities, art)
                ]
        return found


def build_ner(model_name: str) -> NerRunner:
    provider = NlpEngineProvider(
        nlp_engines=(NerOnlySpacyNlpEngine,),
        nlp_configuration={
            "nlp_engine_name": NerOnlySpacyNlpEngine.engine_name,
            "models": [{"lang_code": "en", "model_name": model_name}],
            "ner_model_configuration": {"model_to_presidio_entity_mapping": dict(_NER_LABELS)},
        },
    )
    engine = provider.create_engine()
    assert isinstance(engine, NerOnlySpacyNlpEngine)
    return NerRunner(engine)
