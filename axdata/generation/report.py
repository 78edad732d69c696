"""`generation_report.json`: what a generation run produced, what failed, and what it cost.

Per step: items requested / produced / failed and re-asks. Every failure names its step, concept, item
and reason. From the LLM ledger: calls, tokens and dollars per purpose and per concept, and a cost
projection at a reference price (gpt-4o-mini by default) to the paper's scale, so the "< $0.01 per
concept" claim for 144 training examples can be checked from any run's token counts — including a
local model's, whose own price is zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from axdata.llm.ledger import Prices, Totals

REFERENCE_MODEL = "gpt-4o-mini"
TRAINING_PURPOSES = ("genre", "positive")
# Calls per concept at the paper's scale (spec §1.9): 1 genre + 72 positives for training; detection
# eval adds 36 + 36 responses, ≤10 related-word meanings and filters, ≤10 hard negatives.
PAPER_CALLS = {"genre": 1, "positive": 72, "latent_positive": 36, "latent_negative": 36, "contrast_words": 1,
               "contrast_meaning": 10, "contrast_filter": 10, "hard_negative": 10}
AXBENCH_CLAIM_USD = 0.01


def sum_counts(units: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    steps: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for counts in units:
        for step, values in counts.items():
            for key, value in values.items():
                steps[step][key] += value
    return {step: dict(values) for step, values in steps.items()}


def ledger_summary(entries: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """Calls (cache hits apart), tokens and $ of `model`'s entries, overall, per purpose and per concept."""
    mine = [entry for entry in entries if entry["model"] == model and not entry.get("dry_run")]
    total, by_purpose, by_concept = Totals(), defaultdict(Totals), defaultdict(Totals)
    for entry in mine:
        total.add(entry)
        by_purpose[entry["purpose"]].add(entry)
        by_concept[str(entry["concept_id"])].add(entry)
    return {"model": model, "total": asdict(total),
            "by_purpose": {key: asdict(value) for key, value in sorted(by_purpose.items())},
            "by_concept": {key: asdict(value) for key, value in sorted(by_concept.items())}}


def cost_projection(entries: list[dict[str, Any]], model: str, *, max_tokens: int,
                    reference: str = REFERENCE_MODEL) -> dict[str, Any]:
    """Per-concept cost at `reference` prices, from the mean tokens of each purpose's calls in this run.

    Means use every answered request, cache hits included (a hit carries the tokens of its original
    call), so a resumed run projects the same as an uninterrupted one. `worst_case` assumes every
    response runs to `max_tokens`.
    """
    prices = Prices.for_model(reference)
    tokens: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for entry in entries:
        if entry["model"] == model and not entry.get("dry_run"):
            tokens[entry["purpose"]].append((entry["prompt_tokens"], entry["completion_tokens"]))
    per_call: dict[str, dict[str, float]] = {}
    for purpose, pairs in sorted(tokens.items()):
        prompt = sum(p for p, _ in pairs) / len(pairs)
        completion = sum(c for _, c in pairs) / len(pairs)
        per_call[purpose] = {"calls": len(pairs), "mean_prompt_tokens": round(prompt, 1),
                             "mean_completion_tokens": round(completion, 1),
                             "usd": prices.cost(prompt, completion),
                             "worst_case_usd": prices.cost(prompt, max(completion, max_tokens))}

    def projected(purposes: Iterable[str], key: str) -> float | None:
        if any(purpose not in per_call for purpose in purposes):
            return None
        return sum(PAPER_CALLS[purpose] * per_call[purpose][key] for purpose in purposes)

    training = projected(TRAINING_PURPOSES, "usd")
    detection = [purpose for purpose in PAPER_CALLS if purpose not in TRAINING_PURPOSES]
    return {
        "reference_model": reference,
        "prices_usd_per_mtok": {"input": prices.input_usd_per_mtok, "output": prices.output_usd_per_mtok},
        "per_call": per_call,
        "paper_calls_per_concept": PAPER_CALLS,
        "training_usd_per_concept": training,
        "training_worst_case_usd_per_concept": projected(TRAINING_PURPOSES, "worst_case_usd"),
        "detection_eval_usd_per_concept": projected(detection, "usd"),
        "axbench_claim_usd_per_concept": AXBENCH_CLAIM_USD,
        "within_claim": None if training is None else training < AXBENCH_CLAIM_USD,
    }
