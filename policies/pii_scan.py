"""What a text could hold, found with plain ``re``: the PII vocabulary, a pre-filter, NER windows.

Shared by the engine (``pii_engine``), which runs the recognizers, and the
recognizers themselves (``pii_recognizers``), which narrow their work with the
same tests. Nothing here imports Presidio or spaCy, or needs anything loaded.

The pre-filter (``candidate_entities``) is pure ``re``: each test is a
necessary condition of its recognizers' patterns, so a text it rules out cannot
produce a finding.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

PATTERN_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "SECRET")
NER_ENTITIES = ("PERSON", "LOCATION")
NerScope = Literal["cased", "full"]
SUPPORTED_ENTITIES = frozenset(PATTERN_ENTITIES + NER_ENTITIES)
# Words of context kept on each side of a capitalised word when NER runs on
# windows (see ``ner_windows``); the model itself looks at most a few tokens away.
NER_CONTEXT_WORDS = 8

# Regions tried for numbers written without a country code (Presidio's default set).
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")
# Fewest digits a valid number can have when parsed in a region: the region's
# shortest possible national number, capped by 6, the fewest digits any
# international number (country code + national number) has. Derived from the
# phonenumbers metadata; tests/unit/policies/test_pii.py re-derives it.
PHONE_MIN_DIGITS = {"DE": 4}
PHONE_DEFAULT_MIN_DIGITS = 6


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str
    start: int
    end: int
    score: float


# --- pre-filter ----------------------------------------------------------------

# The characters python-phonenumbers allows between the digit blocks of a number
# (its matcher ignores case, hence 'X'); tests compare it with the library's.
PHONE_PUNCTUATION = (
    "-xX\u2010-\u2015\u2212\u30fc\uff0d-\uff0f \u00a0\u00ad\u200b\u2060\u3000()"
    "\uff08\uff09\uff3b\uff3d.\\[\\]/~\u2053\u223c\uff5e"
)
# Digit runs joined by at most four of those: a phone number's digits always lie
# inside one such cluster. Commas, colons, newlines and letters end a cluster, so
# number lists and tables make many small clusters rather than one huge one.
_DIGIT_CLUSTER = re.compile(rf"\d+(?:[{PHONE_PUNCTUATION}]{{0,4}}\d+)*")
_NON_DIGIT = re.compile(r"\D+")
# The card pattern is 13-19 digits with at most one '-' or ' ' between them.
_CARD = re.compile(r"\d(?:[- ]?\d){12}")
_CARD_MIN_DIGITS = 13
# An IBAN starts with a two-letter country code and two check digits (upper case:
# Presidio's IBAN pattern is case-sensitive).
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}")
# Every IPv4 match has two dots between digits; every IPv6 form has two colons at
# most four hex digits apart.
IP_ANCHOR = r"\d\.\d{1,3}\.\d|:[0-9A-Fa-f]{0,4}:"
_IP = re.compile(IP_ANCHOR)
# Every secret pattern in pii_recognizers contains one of these, in some letter case.
_SECRET_LITERALS = (
    *("sk-", "akia", "asia", "abia", "acca", "github_pat_", "eyj", "-----begin"),
    *(f"gh{c}_" for c in "pousr"),
    *(f"xox{c}-" for c in "baprs"),
    *("key", "token", "secret", "passw", "pwd", "bearer"),
)
_LETTER = re.compile(r"[^\W\d_]")


def digit_clusters(text: str) -> list[tuple[int, int, int]]:
    """(start, end, digit count) of each cluster of nearby digits (see ``_DIGIT_CLUSTER``)."""
    return [(m.start(), m.end(), len(_NON_DIGIT.sub("", m.group()))) for m in _DIGIT_CLUSTER.finditer(text)]


def phone_regions_for(digits: int) -> tuple[str, ...]:
    """The regions with valid numbers of at most ``digits`` digits."""
    return tuple(r for r in PHONE_REGIONS if digits >= PHONE_MIN_DIGITS.get(r, PHONE_DEFAULT_MIN_DIGITS))


def candidate_entities(text: str, entities: Collection[str]) -> frozenset[str]:
    """The requested entities that ``text`` could contain; empty means skip the analyzer."""
    digits = max((d for _, _, d in digit_clusters(text)), default=0)
    # casefold, not lower: it also folds what the recognizers' case-insensitive matching folds (e.g. 'ſ').
    folded = text.casefold() if "SECRET" in entities else ""
    possible = {
        "EMAIL_ADDRESS": lambda: "@" in text,
        "PHONE_NUMBER": lambda: bool(phone_regions_for(digits)),
        "CREDIT_CARD": lambda: digits >= _CARD_MIN_DIGITS and _CARD.search(text) is not None,
        "IBAN_CODE": lambda: digits >= 2 and _IBAN.search(text) is not None,
        "IP_ADDRESS": lambda: _IP.search(text) is not None,
        "SECRET": lambda: any(literal in folded for literal in _SECRET_LITERALS),
        "PERSON": lambda: _LETTER.search(text) is not None,
        "LOCATION": lambda: _LETTER.search(text) is not None,
    }
    return frozenset(e for e in entities if possible[e]())


# --- NER windows ------------------------------------------------------------------

_WORD = re.compile(r"\S+")
_LETTER_RUN = re.compile(r"[^\W\d_]+")
_OPENERS = "\"'([{\u201c\u2018\u00ab"
_TERMINATORS = ".!?\u2026"


def _sentence_initial(text: str, pos: int) -> bool:
    """Whether the letter run at ``pos`` starts a sentence or a line (not just any word)."""
    i = pos - 1
    while i >= 0 and text[i] in _OPENERS:
        i -= 1
    if i < 0:
        return True
    if not text[i].isspace():
        return False  # inside a token, e.g. the 'garcia' of 'maria.garcia'
    while i >= 0 and text[i].isspace():
        if text[i] == "\n":
            return True
        i -= 1
    while i >= 0 and text[i] in "\"')]}\u201d\u2019\u00bb":
        i -= 1
    return i < 0 or text[i] in _TERMINATORS


def ner_windows(text: str, stop_words: Collection[str], context: int = NER_CONTEXT_WORDS) -> list[tuple[int, int]] | None:
    """The spans of ``text`` worth running NER on, or None for the whole text.

    The NER model marks people and places in text that uses letter case: in such
    text they are capitalised, and what the model decides for a token depends
    only on a few tokens around it (its CNN encoder sees four tokens each side;
    the transition features one or two more). So it is enough to run it on
    windows of ``context`` words around each capitalised word, leaving out
    sentence-initial stop words ("The", "Please") and the pronoun "I"; text
    without such a word needs no NER at all. Text where case is no cue, because
    its letters have no case or its sentences mostly start in lower case, is
    scanned whole.
    """
    words: list[int] = []  # start of each whitespace-separated word
    ends: list[int] = []
    for m in _WORD.finditer(text):
        words.append(m.start())
        ends.append(m.end())
    triggers: list[int] = []
    upper_starts = lower_starts = 0
    for m in _LETTER_RUN.finditer(text):
        run = m.group()
        first = run[0]
        if first.islower():
            if _sentence_initial(text, m.start()):
                lower_starts += 1
            continue
        if not first.isupper():
            return None  # a script without letter case
        initial = _sentence_initial(text, m.start())
        upper_starts += initial
        folded = run.lower()
        if folded in stop_words and (initial or folded == "i"):
            continue
        triggers.append(bisect_right(words, m.start()) - 1)
    if lower_starts > upper_starts:
        return None
    spans: list[list[int]] = []
    for word in triggers:
        first_word, last_word = max(0, word - context), min(len(words) - 1, word + context)
        if spans and first_word <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], last_word)
        else:
            spans.append([first_word, last_word])
    return [(words[a], ends[b]) for a, b in spans]
