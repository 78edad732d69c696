"""The LLM judge: three 0–2 ratings (concept, instruction, fluency) for every steered generation.

It talks to any `ChatBackend` (the shared client brings the cache, ledger, concurrency bound, budget guard
and dry-run estimate), asks for a JSON-schema answer, and reads the rating only from the judge's own
answer, parsed strictly: one JSON object and nothing around it. Text inside the generation never becomes
a rating — the generation sits in a hash-marked block the prompt declares to be data (judge_templates).

An answer that cannot be parsed is asked again (`JudgeConfig.parse_retries`, each retry a new cache
entry), then recorded as a parse failure with its raw text and a NaN rating, which the steering score
excludes and counts; `on_parse_failure="raise"` stops instead. Under `protocol="reference"` the judge asks
once, as AxBench's did: no re-ask, neither by the judge nor by the LLM client after a schema failure, and the
steering score counts the failure as 0 (axeval.protocol). Every row records the judge model, the template hash
and the temperature.

>>> parse_rating('{"reason": "on topic", "rating": 2}')
(2, 'on topic')
>>> parse_rating('The text says {"rating": 2}. {"reason": "no", "rating": 0}')
Traceback (most recent call last):
...
axeval.judge.RatingParseError: the answer is not a single JSON object (Expecting value at char 0)
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from huggingface_hub.utils import tqdm

from axdata.errors import InputError
from axdata.io import atomic_path
from axdata.llm import ChatBackend, ChatRequest, SamplingParams, StructuredOutputError
from axeval.judge_templates import CRITERIA, JUDGE_TEMPLATE_HASH, TEMPLATE_HASHES, rating_schema, render
from axeval.protocol import FIXED, check_protocol, judge_asks_once

logger = logging.getLogger(__name__)

T = TypeVar("T")

REQUIRED_COLUMNS = ("concept_id", "concept", "instruction", "generation")
PARSE_FAILURE_POLICIES = ("exclude", "raise")
OK, PARSE_FAILURE, DRY_RUN, TIMEOUT = "ok", "parse_failure", "dry_run", "timeout"
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class RatingParseError(ValueError):
    """The judge's answer is not exactly one JSON object with an integer rating 0, 1 or 2."""


class JudgeParseFailure(RuntimeError):
    """Raised under `on_parse_failure="raise"`: names the row, the criterion and the raw answer."""


@dataclass
class JudgeConfig:
    """How the judge asks and what it does with answers it cannot read."""

    temperature: float = field(
        default=0.7,
        metadata={"help": "Judge sampling temperature; default 0.7, what AxBench's evaluate.py (stanfordnlp/axbench@"
                  "e9b8cd4, the leaderboard's code) passes to its judge. The paper's text says 1.0 and later code 0.0; "
                  "keep it fixed within a comparison. Re-runs stay free and identical: answers are cached by content."},
    )
    max_tokens: int = field(default=256, metadata={"help": "Longest judge answer, in tokens."})
    seed: int | None = field(default=None, metadata={"help": "Sampling seed sent to servers that accept one."})
    parse_retries: int = field(
        default=1,
        metadata={"help": "Extra requests (a new sample) after an answer that cannot be parsed, before it counts as a "
                  "failure; none at temperature 0, where the same request gets the same answer. The LLM client "
                  "also re-asks schema-invalid answers (llm.max_invalid_retries). run.protocol=reference asks "
                  "once (0; another value is refused)."},
    )
    reason_max_chars: int | None = field(
        default=None,
        metadata={"help": "Bound the answer's reason to this many characters (JSON-schema maxLength) — for servers "
                  "that enforce the schema as a grammar (llama.cpp, vLLM) and small judges that write past "
                  "max_tokens; OpenAI's strict mode does not accept it."},
    )
    max_seconds_per_rating: float = field(
        default=120.0,
        metadata={"help": "Longest time one rating may take, all attempts included; past it the rating is a "
                  "counted parse failure (status 'timeout'), so no answer can stall a run."},
    )
    on_parse_failure: str = field(
        default="exclude",
        metadata={"help": "'exclude': record the failure (NaN rating, raw answer kept) and leave the generation "
                  "out of the score, counted; 'raise': stop at the first failure."},
    )

    def __post_init__(self) -> None:
        if self.on_parse_failure not in PARSE_FAILURE_POLICIES:
            raise InputError(
                f"JudgeConfig.on_parse_failure={self.on_parse_failure!r} is unknown; use one of "
                f"{', '.join(PARSE_FAILURE_POLICIES)} (a failure is never turned into a 0)."
            )
        if self.reason_max_chars is not None and self.reason_max_chars < 1:
            raise InputError(f"JudgeConfig.reason_max_chars={self.reason_max_chars}: must be at least 1 (or null).")
        if self.parse_retries < 0 or self.max_tokens < 1 or self.temperature < 0 or not self.max_seconds_per_rating > 0:
            raise InputError(
                f"JudgeConfig: parse_retries={self.parse_retries}, max_tokens={self.max_tokens}, "
                f"temperature={self.temperature}, max_seconds_per_rating={self.max_seconds_per_rating}: retries and "
                "temperature must be ≥ 0, max_tokens ≥ 1, max_seconds_per_rating > 0."
            )


@dataclass(frozen=True)
class Rating:
    """The outcome of one criterion for one generation."""

    rating: float
    reason: str
    raw: str
    status: str
    attempts: int
    cost_usd: float  # paid for this rating in this session (invalid answers included)
    answers: int = 0  # paid answers behind it in this session (0 when it came from the cache)
    reused_cost_usd: float = 0.0  # what cached answers reused for it cost when they were paid for


def parse_rating(text: str) -> tuple[int, str]:
    """The rating and reason of a judge answer; raises RatingParseError for anything but one JSON object.

    A code fence around the object is tolerated; prose around it is not, because a rating quoted from
    the judged text could sit in that prose.
    """
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as err:
        raise RatingParseError(f"the answer is not a single JSON object ({err.msg} at char {err.pos})") from None
    if not isinstance(value, dict):
        raise RatingParseError(f"the answer is JSON but not an object: {type(value).__name__}")
    extra = sorted(set(value) - {"reason", "rating"})
    if extra:
        raise RatingParseError(f"the answer has unexpected key(s) {extra}")
    rating = value.get("rating")
    # bool is an int in Python but `true` is not a rating; 2.0 is.
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or rating not in (0, 1, 2):
        raise RatingParseError(f"'rating' must be 0, 1 or 2, got {rating!r}")
    reason = value.get("reason", "")
    if not isinstance(reason, str):
        raise RatingParseError(f"'reason' must be a string, got {type(reason).__name__}")
    return int(rating), reason


class Judge:
    """Rates generations on the three criteria through `backend`."""

    def __init__(self, backend: ChatBackend, config: JudgeConfig | None = None, *, protocol: str = FIXED):
        self.backend = backend
        self.config = config or JudgeConfig()
        self.one_ask = judge_asks_once(check_protocol(protocol))

    def _request(self, criterion: str, row: dict[str, Any], attempt: int) -> ChatRequest:
        prompt = render(criterion, generation=row["generation"], concept=row["concept"], instruction=row["instruction"])
        return ChatRequest.user(
            prompt,
            purpose=f"judge-{criterion}",
            params=SamplingParams(temperature=self.config.temperature, max_tokens=self.config.max_tokens,
                                  seed=self.config.seed),
            template_hash=TEMPLATE_HASHES[criterion],
            json_schema=rating_schema(self.config.reason_max_chars),
            concept_id=int(row["concept_id"]),
            sample_index=attempt,
            max_invalid_retries=0 if self.one_ask else None,  # None: the client's own bound
        )

    @property
    def attempts(self) -> int:
        """Requests per rating: a re-ask at temperature 0 would repeat the same request and get the same answer."""
        if self.one_ask:
            return 1
        return 1 + (self.config.parse_retries if self.config.temperature > 0 else 0)

    async def rate(self, criterion: str, row: dict[str, Any]) -> Rating:
        """One criterion for one generation, with the retry-then-record policy of the config, in bounded time."""
        try:
            return await asyncio.wait_for(self._rate(criterion, row), self.config.max_seconds_per_rating)
        except asyncio.TimeoutError:
            logger.warning("Judge %s: the %s rating of concept %s took over %.0f s (judge.max_seconds_per_rating); "
                           "recorded as a parse failure.", self.backend.model_name, criterion, row["concept_id"],
                           self.config.max_seconds_per_rating)
            if self.config.on_parse_failure == "raise":
                raise JudgeParseFailure(
                    f"The judge's {criterion} answer for concept {row['concept_id']} took over "
                    f"{self.config.max_seconds_per_rating} s (judge.max_seconds_per_rating).") from None
            # Answers paid during the attempt are in the LLM ledger; the rating records none.
            return Rating(np.nan, "", "", TIMEOUT, self.attempts, 0.0)

    async def _rate(self, criterion: str, row: dict[str, Any]) -> Rating:
        cost, answers, reused, raw, problem = 0.0, 0, 0.0, "", ""
        for attempt in range(self.attempts):
            try:
                completion = await self.backend.complete(self._request(criterion, row, attempt))
            except StructuredOutputError as err:
                raw, problem = err.text, err.reason
                cost, answers = cost + err.cost_usd, answers + err.answers
                continue
            cost += completion.cost_usd
            answers += completion.answers
            reused += completion.reused_cost_usd
            if completion.dry_run:
                return Rating(np.nan, "", "", DRY_RUN, attempt + 1, cost, answers, reused)
            raw = completion.text
            try:
                rating, reason = parse_rating(raw)
            except RatingParseError as err:
                problem = str(err)
                continue
            return Rating(float(rating), reason, raw, OK, attempt + 1, cost, answers, reused)
        if self.config.on_parse_failure == "raise":
            raise JudgeParseFailure(
                f"The judge's {criterion} answer for concept {row['concept_id']} could not be parsed after "
                f"{self.attempts} attempt(s) ({problem}): {raw[:200]!r}. Use a judge that "
                "supports JSON-schema output, or set on_parse_failure='exclude' to record and count failures."
            )
        return Rating(np.nan, "", raw, PARSE_FAILURE, self.attempts, cost, answers, reused)

    async def ajudge(self, generations: pd.DataFrame) -> pd.DataFrame:
        """The generations with three ratings each, their parse status, raw answers and judge provenance."""
        check_generations(generations)
        rows = generations.to_dict("records")
        bar = tqdm(total=len(rows) * len(CRITERIA), desc="Judging", unit="rating", disable=len(rows) < 2)
        # As many ratings in progress as the backend serves at once, so that a rating's time limit counts its own
        # requests, not its wait behind thousands of others.
        slots = asyncio.Semaphore(_concurrency(self.backend))

        async def one(criterion: str, row: dict[str, Any]) -> Rating:
            async with slots:
                rating = await self.rate(criterion, row)
            bar.update(1)
            return rating

        try:
            ratings = await asyncio.gather(*(one(criterion, row) for row in rows for criterion in CRITERIA))
        finally:
            bar.close()
        return self._table(generations, ratings)

    def judge(self, generations: pd.DataFrame) -> pd.DataFrame:
        """Synchronous `ajudge` (on the client's own event loop when it keeps one)."""
        return _run(self.backend, self.ajudge(generations))

    def _table(self, generations: pd.DataFrame, ratings: list[Rating]) -> pd.DataFrame:
        table = generations.reset_index(drop=True).copy()
        n = len(CRITERIA)
        for index, criterion in enumerate(CRITERIA):
            mine = ratings[index::n]
            table[f"{criterion}_rating"] = np.array([r.rating for r in mine], dtype=float)
            table[f"{criterion}_reason"] = [r.reason for r in mine]
            table[f"{criterion}_raw"] = [r.raw for r in mine]
            table[f"{criterion}_status"] = [r.status for r in mine]
            table[f"{criterion}_attempts"] = [r.attempts for r in mine]
        statuses = table[[f"{c}_status" for c in CRITERIA]]
        # A timed-out rating is a parse failure of its generation: excluded from the score and counted.
        table["parse_status"] = np.where(
            (statuses == DRY_RUN).any(axis=1), DRY_RUN,
            np.where(statuses.isin([PARSE_FAILURE, TIMEOUT]).any(axis=1), PARSE_FAILURE, OK))
        table["judge_model"] = self.backend.model_name
        table["judge_template_hash"] = JUDGE_TEMPLATE_HASH
        table["judge_temperature"] = float(self.config.temperature)
        # The one-ask rule is provenance too (only named when on, so default rows are unchanged).
        table["judge_config"] = json.dumps(asdict(self.config) | ({"one_ask": True} if self.one_ask else {}),
                                           sort_keys=True)
        def per_row(values: list[float], dtype: type) -> np.ndarray:
            return np.array(values, dtype=dtype).reshape(-1, n).sum(axis=1) if len(table) else np.zeros(0, dtype)

        # Paid in this session (every answer, invalid ones included) and reused from the response cache.
        table["judge_cost_usd"] = per_row([r.cost_usd for r in ratings], float)
        table["judge_calls"] = per_row([r.answers for r in ratings], int)
        table["judge_reused_cost_usd"] = per_row([r.reused_cost_usd for r in ratings], float)
        failures = int((table["parse_status"] == PARSE_FAILURE).sum())
        if failures:
            logger.warning(
                "Judge %s: %d of %d generation(s) have a rating that could not be parsed; they are kept with "
                "NaN ratings and %s (see the *_raw columns).", self.backend.model_name, failures, len(table),
                "score 0 under run.protocol=reference" if self.one_ask else "excluded from the steering score")
        return table


def check_generations(generations: pd.DataFrame, source: str = "steering generations") -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in generations.columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {missing}; the judge needs {list(REQUIRED_COLUMNS)} "
            "(steered inference writes them)."
        )
    for column in ("concept", "instruction", "generation"):
        bad = generations[column].map(lambda value: not isinstance(value, str))
        if bad.any():
            raise InputError(
                f"{source}: column {column!r} has {int(bad.sum())} non-text value(s) (first at row "
                f"{int(np.flatnonzero(bad.to_numpy())[0])}); an empty generation should be '' , not null."
            )


def summarize_judgements(judgements: pd.DataFrame) -> dict[str, Any]:
    """Calls, cost, cost per call and parse failures of a judged frame (for reports and metric cards)."""
    calls = int(judgements["judge_calls"].sum()) if len(judgements) else 0
    paid = float(judgements["judge_cost_usd"].sum()) if len(judgements) else 0.0
    reused = float(judgements["judge_reused_cost_usd"].sum()) \
        if len(judgements) and "judge_reused_cost_usd" in judgements else 0.0
    cost = paid + reused
    return {
        "judge_model": sorted(set(judgements["judge_model"])) if len(judgements) else [],
        "judge_template_hash": sorted(set(judgements["judge_template_hash"])) if len(judgements) else [],
        "judge_temperature": sorted(set(judgements["judge_temperature"])) if len(judgements) else [],
        "generations": len(judgements),
        "calls": calls,
        "cost_usd": cost,  # what the ratings cost, including answers reused from the cache
        "reused_cost_usd": reused,  # the part of cost_usd paid in an earlier session (cache hits)
        "cost_per_call_usd": paid / calls if calls else 0.0,
        "parse_failures": int((judgements["parse_status"] == PARSE_FAILURE).sum()) if len(judgements) else 0,
    }


def write_judgements(judgements: pd.DataFrame, path: str | Path) -> Path:
    """Write the judged frame as parquet, atomically."""
    target = Path(path)
    with atomic_path(target) as tmp:
        judgements.to_parquet(tmp, index=False)
    return target


def _concurrency(backend: ChatBackend) -> int:
    """The backend's own bound on requests in flight (`llm.max_concurrency`), 8 for backends without one."""
    config = getattr(backend, "config", None)
    return max(1, int(getattr(config, "max_concurrency", 8) or 8))


def _run(backend: ChatBackend, coro: Coroutine[Any, Any, T]) -> T:
    run_sync = getattr(backend, "run_sync", None)
    return run_sync(coro) if callable(run_sync) else asyncio.run(coro)
