"""Token and cost ledger with a budget guard.

Every answer the server returns becomes one JSON line in the ledger file (model, purpose, concept, tokens,
cost, cached / dry-run / valid flags), written as it arrives — before it is validated, cached or used — so an
answer that fails its schema is counted and paid for like any other, and a kill loses no paid answer. Totals are derived from those entries, grouped by model, purpose or
concept. Before a call starts, `reserve` checks that the spend so far, plus what calls in flight may
still cost, plus this call's worst case (estimated prompt + `max_tokens` completion) stays within
`max_usd`; otherwise the call is refused with `BudgetExceededError`.
"""

from __future__ import annotations

import json
import math
import numbers
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from axdata.llm.types import BudgetExceededError, ChatRequest, Completion

# USD per million tokens (input, output). Local models cost nothing.
KNOWN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-mini-2024-07-18": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}


@dataclass(frozen=True)
class Prices:
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0

    @classmethod
    def for_model(cls, model: str, input_usd_per_mtok: float | None = None,
                  output_usd_per_mtok: float | None = None) -> Prices:
        known_in, known_out = KNOWN_PRICES.get(model, (0.0, 0.0))
        return cls(known_in if input_usd_per_mtok is None else input_usd_per_mtok,
                   known_out if output_usd_per_mtok is None else output_usd_per_mtok)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok) / 1e6


# Chat templates wrap the messages in role markers and often a default system prompt (SmolLM2's adds
# ~25 tokens), which the messages themselves do not show.
_REQUEST_OVERHEAD_TOKENS = 32


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """A deliberately generous estimate: ≈3 characters a token, per-message and per-request overhead, and
    the JSON schema (sent as a grammar or, in prompt mode, appended to the prompt)."""
    tokens = _REQUEST_OVERHEAD_TOKENS + sum(math.ceil(len(m["content"]) / 3) + 8 for m in request.messages)
    if request.json_schema is not None:
        tokens += math.ceil(len(json.dumps(request.json_schema)) / 3)
    return tokens


@dataclass
class Totals:
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    invalid_answers: int = 0

    def add(self, entry: dict) -> None:
        if entry["cached"]:
            self.cache_hits += 1
            return
        self.calls += 1
        self.invalid_answers += not entry.get("valid", True)
        self.prompt_tokens += entry["prompt_tokens"]
        self.completion_tokens += entry["completion_tokens"]
        self.cost_usd += entry["cost_usd"]


class Ledger:
    """Thread-safe; `path=None` keeps entries in memory only."""

    def __init__(self, path: str | Path | None = None, max_usd: float | None = None):
        self.path = Path(path) if path is not None else None
        self.max_usd = max_usd
        self._lock = threading.Lock()
        self._reserved = 0.0
        self.entries: list[dict] = []
        if self.path is not None and self.path.exists():
            self.entries = _read_entries(self.path)
        # A run's budget covers the spend of this session, not what earlier runs already paid.
        self._session_start = len(self.entries)

    @property
    def session_entries(self) -> list[dict]:
        return self.entries[self._session_start:]

    def spent_usd(self) -> float:
        return sum(e["cost_usd"] for e in self.session_entries if not e["cached"])

    def reserve(self, request: ChatRequest, prices: Prices) -> float:
        """Reserve the worst-case cost of `request`; raises if it could exceed the budget."""
        worst = prices.cost(estimate_prompt_tokens(request), request.params.max_tokens)
        with self._lock:
            if self.max_usd is not None:
                committed = self.spent_usd() + self._reserved
                if committed + worst > self.max_usd:
                    raise BudgetExceededError(
                        f"Budget guard: a {request.purpose!r} call could cost up to ${worst:.4f}, and "
                        f"${committed:.4f} of max_usd=${self.max_usd:.4f} is spent or in flight. Raise "
                        "max_usd (llm.max_usd in the config) or use --dry-run to estimate the cost first."
                    )
            self._reserved += worst
        return worst

    def release(self, amount: float) -> None:
        with self._lock:
            self._reserved = max(0.0, self._reserved - amount)

    def record(self, request: ChatRequest, completion: Completion, *, valid: bool = True) -> None:
        """One line for one answer (`valid=False`: it arrived, was paid for, and failed its schema or reported an
        unusable token usage — then at its worst-case cost)."""
        _check_billable(completion)
        entry = {
            "time": time.time(),
            "model": completion.model,
            "purpose": request.purpose,
            "concept_id": request.concept_id,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "cost_usd": completion.cost_usd,
            "cached": completion.cached,
            "dry_run": completion.dry_run,
            "valid": valid,
        }
        with self._lock:
            self.entries.append(entry)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")

    def totals(self, by: str | None = None, session_only: bool = True) -> dict[object, Totals] | Totals:
        """Totals overall (`by=None`) or grouped by an entry field: "model", "purpose", "concept_id"."""
        entries = self.session_entries if session_only else self.entries
        if by is None:
            total = Totals()
            for entry in entries:
                total.add(entry)
            return total
        grouped: dict[object, Totals] = defaultdict(Totals)
        for entry in entries:
            grouped[entry[by]].add(entry)
        return dict(grouped)


def _check_billable(completion: Completion) -> None:
    """Refuse a paid answer whose tokens or cost are not finite numbers >= 0: one negative entry would lower the
    spend and switch the budget guard off. Backends refuse such answers before they get here (the client's
    `usage_counts`), so this is a bug's guard, not a user error."""
    if completion.cached:
        return  # a cache hit adds nothing to the spend
    fields = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
              "cost_usd": completion.cost_usd}
    bad = {name: value for name, value in fields.items()
           if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0}
    if bad:
        raise ValueError(f"Ledger.record: an answer of {completion.model!r} has {bad}; the chat backend must refuse "
                         "unusable usage before ledgering (axdata.llm.client.usage_counts).")


def _read_entries(path: Path) -> Iterable[dict]:
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                # A line cut by a kill mid-write: the call it describes is in the cache or will be redone.
                continue
    return entries
