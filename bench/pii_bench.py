"""Latency that PII scanning adds to a request: ``scan_request`` timed on its own.

``python -m bench.pii_bench [--iterations 200] [--ner-iterations 60] [--sizes 1024,8192]``

One chat request with a single user message of each size (prose with a few
numbers, one e-mail address, one phone number, a person and a city per
paragraph), scanned with:

- ``off``: the policy's action is off (never touches the analyzer);
- ``redact patterns``: EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE,
  IP_ADDRESS and SECRET (no NLP pipeline);
- ``redact ner``: PERSON and LOCATION (trimmed spaCy NER pipeline, run on
  windows around capitalised words: ``ner_scope: cased``, the default);
- ``redact ner full``: the same with ``ner_scope: full`` (NER on the whole text);
- ``redact all``: the default entity set, both paths;
- ``ref: full spaCy``: for scale, the model's whole spaCy pipeline on the same
  text, run directly; out-of-the-box Presidio runs it on every call, whatever
  entities are asked for.

Models load before timing starts. Each row reports, in milliseconds, p50 and p99
of the wall-clock time ``scan_request`` takes, and p50 of the CPU time the
process spends in it (all threads): on a busy machine the wall-clock figures
include waiting for a core, the CPU figure much less so.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

import spacy

from policies.pii import PiiPolicy, scan_request
from policies.pii_engine import NER_MODEL, get_engine
from policies.pii_scan import NER_ENTITIES, PATTERN_ENTITIES

_PARAGRAPHS = (
    (
        "Thanks for the update on the migration plan. Maria Garcia from the Lisbon office "
        "asked whether the rollout can move to week 14, since the audit closes on the 3rd. "
    ),
    (
        "Please summarise the attached notes for the steering group and keep it under 300 "
        "words; the budget line went from 1.2 to 1.5 million after the second review. "
    ),
    (
        "If anything is unclear, write to maria.garcia@example.org or call +44 20 7946 0958 "
        "before Friday, and copy the finance team on the final version of the summary. "
    ),
    (
        "The previous draft mixed up the two vendors, so double-check which contract each "
        "figure belongs to before you send it; version 2.3 of the template is the current one. "
    ),
)

SCENARIOS: dict[str, PiiPolicy] = {
    "off": PiiPolicy(action="off"),
    "redact patterns": PiiPolicy(action="redact", entities=list(PATTERN_ENTITIES)),
    "redact ner": PiiPolicy(action="redact", entities=list(NER_ENTITIES)),
    "redact ner full": PiiPolicy(action="redact", entities=list(NER_ENTITIES), ner_scope="full"),
    "redact all": PiiPolicy(action="redact"),
}


@dataclass(slots=True)
class Row:
    scenario: str
    size: int
    iterations: int
    p50_ms: float
    p99_ms: float
    cpu_p50_ms: float
    found: int


def prompt(size: int) -> str:
    text = ""
    i = 0
    while len(text) < size:
        text += _PARAGRAPHS[i % len(_PARAGRAPHS)]
        i += 1
    return text[:size]


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(scenario: str, policy: PiiPolicy, size: int, iterations: int) -> Row:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt(size)}]}
    result = await scan_request("chat", body, policy)
    samples: list[float] = []
    cpu: list[float] = []
    for _ in range(iterations):
        start, cpu_start = time.perf_counter(), time.process_time()
        await scan_request("chat", body, policy)
        samples.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
    return Row(
        scenario,
        size,
        iterations,
        statistics.median(samples),
        _percentile(samples, 0.99),
        statistics.median(cpu),
        sum(result.counts.values()),
    )


def measure_full_pipeline(size: int, iterations: int) -> Row:
    nlp = spacy.load(NER_MODEL)
    text = prompt(size)
    samples: list[float] = []
    cpu: list[float] = []
    for _ in range(iterations):
        start, cpu_start = time.perf_counter(), time.process_time()
        with nlp.memory_zone():
            nlp(text)
        samples.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
    p50, p99 = statistics.median(samples), _percentile(samples, 0.99)
    return Row("ref: full spaCy", size, iterations, p50, p99, statistics.median(cpu), 0)


async def run(sizes: list[int], iterations: int, ner_iterations: int) -> list[Row]:
    load_start = time.perf_counter()
    get_engine().load(list(PATTERN_ENTITIES + NER_ENTITIES))
    print(f"analyzer loaded in {time.perf_counter() - load_start:.1f} s (not part of the figures)")
    rows = []
    for size in sizes:
        for scenario, policy in SCENARIOS.items():
            uses_ner = policy.action != "off" and not set(policy.entities).isdisjoint(NER_ENTITIES)
            rows.append(await measure(scenario, policy, size, ner_iterations if uses_ner else iterations))
        rows.append(measure_full_pipeline(size, ner_iterations))
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'scenario':<16} {'prompt':>7} {'iters':>6} {'p50 ms':>8} {'p99 ms':>8} {'cpu p50':>8} {'found':>6}")
    for r in rows:
        print(
            f"{r.scenario:<16} {r.size:>7} {r.iterations:>6} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f}"
            f" {r.cpu_p50_ms:>8.3f} {r.found:>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=200, help="per row without NER")
    parser.add_argument("--ner-iterations", type=int, default=60, help="per row with NER")
    parser.add_argument("--sizes", default="1024,8192", help="prompt sizes in characters")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print_table(asyncio.run(run(sizes, args.iterations, args.ner_iterations)))


if __name__ == "__main__":
    main()
