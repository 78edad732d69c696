"""Asking with a policy: requests whose answers fail a step are re-asked, and what still fails is recorded.

An answer can fail a step's check (empty, refused, unparseable). It is then re-asked as a new sample
— `sample_index` and the sampling seed move on, so the cache key differs and a cached bad answer is
not simply returned again — at most `max_reasks` times. Items that fail every attempt come back as
`Failure`s for the generation report; nothing is dropped silently. Every request carries its own
seed, derived from the item, so a resumed run asks exactly the questions an uninterrupted run asks.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from axdata.hashing import content_hash
from axdata.llm.types import ChatBackend, ChatRequest, Completion

V = TypeVar("V")

# An answer is judged by a check: the accepted value, or None and the reason it failed.
Check = Callable[[Completion], "tuple[V | None, str | None]"]

_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i can'?t (help|assist|do)|i cannot|i'?m unable|i am unable|"
    r"i won'?t|as an ai\b)",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’`"


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any JSON-able parts: the same parts always give the same seed."""
    return int(content_hash(list(parts), length=8), 16) & 0x7FFFFFFF


def clean(text: str) -> str:
    """The answer without surrounding whitespace and quotes (LLMs often quote a whole response)."""
    return text.strip().strip(_QUOTES).strip()


def check_response(completion: Completion) -> tuple[str | None, str | None]:
    """A free-text response passes unless it is empty or a refusal."""
    text = clean(completion.text)
    if not text:
        return None, "empty answer"
    if _REFUSAL.match(text):
        return None, "refused"
    return text, None


@dataclass(frozen=True)
class Failure:
    """An item that failed every attempt: recorded in the generation report."""

    step: str
    concept_id: int | None
    item: str
    reason: str
    attempts: int
    last_answer: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class Asked(Generic[V]):
    """Per item, the accepted value or None (then a `Failure` names it); `reasks` counts extra requests."""

    values: list[V | None]
    failures: list[Failure]
    reasks: int


def resample(request: ChatRequest, attempt: int) -> ChatRequest:
    """The `attempt`-th re-ask of `request`: a new sample index and a new seed derived from the old one."""
    seed = request.params.seed
    params = dataclasses.replace(request.params, seed=None if seed is None else derive_seed(seed, attempt))
    return dataclasses.replace(request, sample_index=request.sample_index + attempt, params=params)


async def ask(backend: ChatBackend, requests: Sequence[ChatRequest], check: Check, *, step: str,
              items: Sequence[str], max_reasks: int, desc: str | None = None) -> Asked:
    """Answer every request, re-asking the failed ones in batches; results in the order of `requests`."""
    values: list = [None] * len(requests)
    reasons: list[tuple[str, str]] = [("", "")] * len(requests)
    pending = list(range(len(requests)))
    reasks = 0
    for attempt in range(max_reasks + 1):
        if not pending:
            break
        batch = [resample(requests[i], attempt) if attempt else requests[i] for i in pending]
        reasks += len(batch) if attempt else 0
        completions = await backend.complete_many(batch, desc=desc)
        still = []
        for index, completion in zip(pending, completions):
            value, reason = check(completion)
            if reason is None:
                values[index] = value
            else:
                reasons[index] = (reason, completion.text)
                still.append(index)
        pending = still
    failures = [Failure(step, requests[i].concept_id, items[i], reasons[i][0], max_reasks + 1, reasons[i][1][:300])
                for i in pending]
    return Asked(values, failures, reasks)
