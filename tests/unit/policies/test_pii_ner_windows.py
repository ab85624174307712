"""NER on windows around capitalised words finds what NER on the whole text finds."""

from __future__ import annotations

import pytest

from policies import pii_engine
from policies.pii_scan import ner_windows

STOP = frozenset({"the", "please", "if", "i", "can", "may", "will", "we", "how", "our", "in", "my", "a", "on"})

# Prompts of the kinds a gateway sees, with people and places (and some without).
CORPUS = [
    "Thanks for the update on the migration plan. Maria Garcia from the Lisbon office asked whether the rollout "
    "can move to week 14, since the audit closes on the 3rd.",
    "John Smith flew from Chicago to Berlin last Tuesday and met with Angela Weber at the airport.",
    "Please forward this to Dr. Priya Raman, who is based in Bangalore, before the end of the day.",
    "Write a short poem about Paris in the spring, mentioning the Seine and Montmartre.",
    "The customer, Mr. Hiroshi Tanaka, called from Osaka to complain about a delayed shipment to Kyoto.",
    "Can you summarize this email? Hi team, Sarah and I will be in Toronto next week for the conference. Best, Tom",
    "Translate the following sentence into French: The meeting with Carlos Mendez in Madrid has been moved to Thursday.",
    "We need to refactor the payment service; the current implementation is slow and hard to test.",
    "Patient Robert Johnson, 54, was admitted to St. Mary's Hospital in Boston with chest pain.",
    "Ahmed Al-Farsi moved from Dubai to London in 2019 and now works for a bank near Canary Wharf.",
    "The quarterly report shows revenue growth in Brazil, Mexico and Argentina, led by our team in São Paulo.",
    "Olivia Brown and Liam Wilson are organising the offsite in Edinburgh; Noah Davies will handle travel.",
    "Anna Kowalski from Warsaw and Piotr Nowak from Krakow both reported the same bug in the mobile app.",
    "The shipment left Rotterdam on Monday and should reach New York by the 21st, according to Jan de Vries.",
    "Write a LinkedIn recommendation for my colleague Jessica Taylor, who led our expansion into Australia.",
    "Hey, it's Mark. Can you book a table for two at a restaurant in Rome for Saturday night?",
    "Sophie Martin's address is 12 Rue de Rivoli, Paris, and her manager is Luc Bernard.",
    "Give feedback on this essay: Growing up in Nairobi, I learned from my grandmother Wanjiru that patience is a virtue.",
    "Customer complaint: I ordered a laptop from your Dallas store and it arrived broken. Regards, Karen White",
    "Maria lives in Chile and her brother Jorge lives in Peru.",
    "May I ask you to proofread the following paragraph for grammar mistakes?",
    "May Chen will join the call from Vancouver.",
    "Will Turner sailed to Tortuga with Jack Sparrow.",
    "Pat, the invoice for the Denver project is attached; please approve it by Friday.",
    "I spoke with Grace Lee yesterday; she said Hong Kong is too expensive for the team retreat.",
    '"Jack Ma founded Alibaba in Hangzhou," said the lecturer to the students.',
    "Summarize: On July 4th, Mayor Brandon Scott spoke at the Inner Harbor in Baltimore.",
    "Explain how a hash map works and give an example in Python.",
    # Case is no cue here: scanned whole.
    "my name is david okafor and i live in lagos, can you help me write a cover letter?",
    "the quick brown fox jumps over the lazy dog near springfield where homer simpson lives.",
    # Long text: a few names far apart.
    " ".join(["The build is green again and nothing else changed in the pipeline today."] * 6
             + ["Escalate to Ingrid Larsen in Oslo if it breaks."]
             + ["The build is green again and nothing else changed in the pipeline today."] * 6
             + ["Otherwise ping Marco Rossi from the Turin team."]),
]


def test_windows_cover_capitalised_words_with_context() -> None:
    text = "The two three four five six seven eight nine ten Alice eleven twelve thirteen"
    assert ner_windows(text, STOP, context=2) == [(text.index("nine"), text.index(" thirteen"))]


def test_no_capitalised_word_means_no_ner() -> None:
    assert ner_windows("The build is green. Please check the logs; if it fails, retry.", STOP) == []
    # Inside a token (e-mail) a letter run is not a sentence start.
    assert ner_windows("The address is maria.garcia@example.org and x.y.z too.", STOP) == []


def test_sentence_initial_stop_words_and_the_pronoun_do_not_trigger() -> None:
    assert ner_windows("Please do it. The rest can wait, I think. If so, we go.", STOP) == []
    # A stop word mid-sentence may be a name.
    assert ner_windows("We asked Will to come. Later he said yes.", STOP, context=0) == [(9, 13), (23, 28)]


def test_text_without_letter_case_cues_is_scanned_whole() -> None:
    assert ner_windows("my name is david. i live in lagos. call me.", STOP) is None
    assert ner_windows("请把这封邮件转发给王伟", STOP) is None
    assert ner_windows("", STOP) == []


def test_windows_merge_when_they_touch() -> None:
    text = "The b Alice c d Bob e f"
    assert ner_windows(text, STOP, context=1) == [(text.index("b"), text.index(" f"))]
    assert ner_windows(text, STOP, context=0) == [(6, 11), (16, 19)]


@pytest.fixture(scope="module")
def ner() -> object:
    engine = pii_engine.get_engine()
    engine.load(["PERSON"])
    return engine._ner


@pytest.mark.parametrize("text", CORPUS)
def test_windowed_ner_finds_exactly_what_whole_text_ner_finds(ner, text: str) -> None:  # type: ignore[no-untyped-def]
    whole = ner.analyze([text], windowed=False)[0]
    windowed = ner.analyze([text], windowed=True)[0]
    assert windowed == whole


def test_windowed_ner_runs_the_model_on_a_fraction_of_prose(ner) -> None:  # type: ignore[no-untyped-def]
    text = CORPUS[-1]
    spans = ner_windows(text, ner.stop_words)
    assert spans is not None and sum(e - s for s, e in spans) < len(text) / 2
    assert {text[f.start:f.end] for f in ner.analyze([text])[0]} >= {"Ingrid Larsen", "Oslo", "Marco Rossi"}


def test_batch_of_texts_keeps_offsets_per_text(ner) -> None:  # type: ignore[no-untyped-def]
    texts = ["Nothing here.", CORPUS[1], "The build broke again. Ask Marco Rossi about it."]
    found = ner.analyze(texts)
    assert found[0] == []
    assert {texts[1][f.start:f.end] for f in found[1]} >= {"John Smith", "Chicago", "Berlin"}
    assert [texts[2][f.start:f.end] for f in found[2]] == ["Marco Rossi"]
    assert found[1] == ner.analyze([CORPUS[1]], windowed=False)[0]
