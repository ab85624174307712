"""Exact request cost from actual usage.

Prices are integers of micro-USD per one million tokens, so one token at price
``p`` costs exactly ``p`` pico-USD (1e-6 USD / 1e6 tokens = 1e-12 USD). Costs are
therefore exact integers of pico-USD, computed once per request.
"""

from __future__ import annotations

from core.config import Price
from serving.base import Usage

PICO_PER_USD = 10**12
PICO_PER_MICRO = 10**6


def cost_pico(usage: Usage, price: Price) -> int:
    details = usage.prompt_tokens_details
    cached = min(details.cached_tokens, usage.prompt_tokens) if details is not None else 0
    cached_price = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
    return (
        (usage.prompt_tokens - cached) * price.input_per_mtok
        + cached * cached_price
        + usage.completion_tokens * price.output_per_mtok
    )


def worst_case_pico(prompt_tokens: int, completion_tokens: int, price: Price) -> int:
    return prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok


def usd(pico: int) -> str:
    """Pico-USD as a decimal string of dollars, exact (no float)."""
    sign = "-" if pico < 0 else ""
    whole, frac = divmod(abs(pico), PICO_PER_USD)
    return f"{sign}{whole}.{frac:012d}"
