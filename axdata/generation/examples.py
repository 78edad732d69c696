"""The rows of every split, one unit of work at a time (spec §1.4–1.7).

Each function makes one unit — the shared negatives of one genre, or one concept's training,
detection-eval, steering or preference rows — and returns a `Unit`: its rows (dicts in the split's
columns), per-step counts and failures. Instructions are sampled with seeds derived from the run seed
and the unit, and every request carries its own seed, so a unit asks the same questions whenever it runs.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from axdata.concepts import Concept
from axdata.errors import InputError
from axdata.generation.asking import Asked, Failure, ask, check_response, clean, derive_seed
from axdata.generation.config import PAPER_POOLS, DataGenerationConfig
from axdata.generation.pools import InstructionPool
from axdata.generation.templates import (
    FALLBACK_STEERING_PROMPT,
    FINAL_TAG,
    STEERING_PROMPT,
    WITH_CONCEPT,
    WITH_CONTRAST,
    WITHOUT_CONCEPT,
    PromptTemplate,
)
from axdata.generation.written import WRITTEN_MODEL, WrittenExample, WrittenExamples
from axdata.llm.types import ChatBackend, ChatRequest, Completion, SamplingParams
from axdata.schema import EMPTY_CONCEPT, HALVES, SHARED_NEGATIVE_ID

Truncate = Callable[[str, int], str]
_LEADING_TAGS = re.compile(r"^(?:\s*[*_]*<[^<>\n]{1,20}>[*_:]*)+\s*")
_FEATURE_INDEX = re.compile(r"/(\d+)/?$")
DATASET_CATEGORY = "instruction"


@dataclass
class Unit:
    """One committed piece of work: its rows, its steps' counts, its failures and notes."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # what later units need (genres, contrast concepts)

    def record(self, step: str, requested: int, asked: Asked) -> None:
        produced = sum(value is not None for value in asked.values)
        self.counts[step] = {"requested": requested, "produced": produced, "failed": requested - produced,
                             "reasked": asked.reasks}
        self.failures += asked.failures


def tokenizer_truncator(tokenizer: Any) -> Truncate:
    """`truncate(text, n)` keeping the first `n` tokens of `tokenizer` (AxBench: tokenize, cut, detokenize);
    any object with `tokenize` and `convert_tokens_to_string` will do."""

    def truncate(text: str, n_tokens: int) -> str:
        tokens = tokenizer.tokenize(text)
        return text if len(tokens) <= n_tokens else tokenizer.convert_tokens_to_string(tokens[:n_tokens]).strip()

    return truncate


def sample_instructions(pool: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """`n` instructions without repeats while the pool lasts; a small pool is walked again in a new order."""
    picked: list[str] = []
    while len(picked) < n:
        picked += rng.sample(list(pool), min(len(pool), n - len(picked)))
    return picked


def strip_leading_tags(text: str) -> str:
    """The response after a `<FINAL>` tag (or any leading tags) that hard-negative answers start with.

    >>> strip_leading_tags("<FINAL> The bank of the river."), strip_leading_tags("Plan: x\\n<FINAL>\\nDone")
    ('The bank of the river.', 'Done')
    """
    if FINAL_TAG in text:
        text = text.rsplit(FINAL_TAG, 1)[1]
    return clean(_LEADING_TAGS.sub("", text))


def sae_fields(concept: Concept) -> dict[str, Any]:
    """`sae_link` = the concept's ref; `sae_id` = the feature index at the end of a Neuronpedia URL."""
    match = _FEATURE_INDEX.search(concept.ref or "")
    return {"sae_link": concept.ref, "sae_id": int(match.group(1)) if match else None}


@dataclass(frozen=True)
class Context:
    """What every unit needs: the config, the pool, the two backends and the truncation rule."""

    config: DataGenerationConfig
    pool: InstructionPool
    llm: ChatBackend
    target: ChatBackend
    truncate: Truncate | None = None
    written: WrittenExamples | None = None

    def written_rows(self, concept: Concept, split: str, category: str) -> list[WrittenExample] | None:
        return None if self.written is None else self.written.get(concept, split, category)

    def llm_request(self, template: PromptTemplate, values: dict[str, str], purpose: str, concept: Concept,
                    seed: int, max_tokens: int | None = None) -> ChatRequest:
        """`max_tokens` defaults to the config's per-response limit; an answer holding several responses needs more."""
        return ChatRequest.user(
            template.render(**values), purpose=purpose, template_hash=template.version,
            concept_id=concept.concept_id,
            params=SamplingParams(temperature=self.config.temperature,
                                  max_tokens=max_tokens or self.config.llm_max_tokens, seed=seed),
        )

    def target_request(self, instruction: str, purpose: str, concept_id: int | None) -> ChatRequest:
        # Greedy, like AxBench's shared negatives; identical instructions share one cached answer.
        return ChatRequest.user(instruction, purpose=purpose, concept_id=concept_id,
                                params=SamplingParams(temperature=0.0, max_tokens=self.config.target_max_tokens))

    def check_llm_response(self, completion: Completion) -> tuple[str | None, str | None]:
        text, reason = check_response(completion)
        if text is not None and self.truncate is not None:
            text = self.truncate(text, self.config.output_length)
        return text, reason

    async def ask_llm(self, requests: list[ChatRequest], step: str, items: list[str],
                      check: Callable[[Completion], tuple[str | None, str | None]] | None = None) -> Asked:
        return await ask(self.llm, requests, check or self.check_llm_response, step=step, items=items,
                         max_reasks=self.config.max_reasks, desc=step)


def _row(instruction: str, output: str, output_concept: str, genre: str, category: str, concept_id: int,
         template: PromptTemplate | None, model: str, sample_seed: int, **extra: Any) -> dict[str, Any]:
    return {"input": instruction, "output": output, "output_concept": output_concept, "concept_genre": genre,
            "category": category, "dataset_category": DATASET_CATEGORY, "concept_id": concept_id, **extra,
            "template_hash": template.version if template else None, "generator_model": model,
            "sample_seed": sample_seed}


def _nonempty(completion: Completion) -> tuple[str | None, str | None]:
    text = completion.text.strip()
    return (text, None) if text else (None, "empty answer")


async def shared_negatives(ctx: Context, genre: str) -> Unit:
    """The target model's own greedy answers to `num_of_examples // 2` train instructions of `genre`,
    shared by every concept (concept_id -1, output_concept EMPTY_CONCEPT)."""
    unit = Unit()
    seed = derive_seed(ctx.config.seed, "shared_negative", genre)
    instructions = sample_instructions(ctx.pool.get(genre, "train"), ctx.config.positives_per_concept,
                                       random.Random(seed))
    requests = [ctx.target_request(text, "shared_negative", None) for text in instructions]
    # Greedy answers do not change when asked again: an empty one is reported, not re-asked.
    asked = await ask(ctx.target, requests, _nonempty, step="shared_negative",
                      items=[f"{genre}[{i}]" for i in range(len(requests))], max_reasks=0, desc=f"{genre} negatives")
    unit.record("shared_negative", len(requests), asked)
    unit.rows = [_row(text, output, EMPTY_CONCEPT, genre, "negative", SHARED_NEGATIVE_ID, None,
                      ctx.target.model_name, seed)
                 for text, output in zip(instructions, asked.values) if output is not None]
    return unit


async def train_positives(ctx: Context, concept: Concept, genre: str) -> Unit:
    """`num_of_examples // 2` LLM responses that carry the concept, to train-split instructions of its genre."""
    unit = Unit()
    seed = derive_seed(ctx.config.seed, "train", concept.concept_id)
    written = ctx.written_rows(concept, "train", "positive")
    if written is not None:
        unit.rows = _written(written[:ctx.config.positives_per_concept], concept, genre, "positive", seed)
        unit.counts["positive"] = _written_counts(len(unit.rows))
        return unit
    instructions = sample_instructions(ctx.pool.get(genre, "train"), ctx.config.positives_per_concept,
                                       random.Random(seed))
    requests = [ctx.llm_request(WITH_CONCEPT, {"concept": concept.concept, "instruction": text}, "positive",
                                concept, derive_seed(seed, index))
                for index, text in enumerate(instructions)]
    asked = await ctx.ask_llm(requests, "positive", [f"positive[{i}]" for i in range(len(requests))])
    unit.record("positive", len(requests), asked)
    unit.rows = [_row(text, output, concept.concept, genre, "positive", concept.concept_id, WITH_CONCEPT,
                      ctx.llm.model_name, seed)
                 for text, output in zip(instructions, asked.values) if output is not None]
    return unit


def _written(examples: Sequence[WrittenExample], concept: Concept, genre: str, category: str, seed: int,
             **extra: Any) -> list[dict[str, Any]]:
    return [_row(example.input, example.output, example.output_concept or concept.concept, genre, category,
                 concept.concept_id, None, WRITTEN_MODEL, seed, **extra) for example in examples]


def _written_counts(n: int) -> dict[str, int]:
    return {"requested": n, "produced": n, "failed": 0, "reasked": 0, "written": n}


def written_latent_rows(ctx: Context, concept: Concept, genre: str) -> Unit | None:
    """The concept's detection-eval rows from written examples, or None when it has no written positives."""
    positives = ctx.written_rows(concept, "latent", "positive")
    if positives is None:
        return None
    n = ctx.config.latent_num_of_examples
    seed = derive_seed(ctx.config.seed, "latent", concept.concept_id)
    unit, sae = Unit(), sae_fields(concept)
    for category, examples in (("positive", positives[:n]),
                               ("negative", (ctx.written_rows(concept, "latent", "negative") or [])[:n]),
                               ("hard negative", ctx.written_rows(concept, "latent", "hard negative") or [])):
        unit.rows += _written(examples, concept, genre, category, seed, **sae)
        unit.counts[f"latent_{category.replace(' ', '_')}"] = _written_counts(len(examples))
    return unit


def _negative_genres(config: DataGenerationConfig) -> list[str]:
    n = config.latent_num_of_examples
    math, code = int(config.math_share * n), int(config.code_share * n)
    return ["math"] * math + ["code"] * code + ["text"] * (n - math - code)


async def latent_rows(ctx: Context, concept: Concept, genre: str, contrast: Sequence[tuple[str, str]]) -> Unit:
    """Detection-eval rows: positives, genre-balanced negatives that avoid the concept, and one hard negative
    per contrast concept (output_concept "word//meaning"), all on test-split instructions."""
    unit = Unit()
    n = ctx.config.latent_num_of_examples
    seed = derive_seed(ctx.config.seed, "latent", concept.concept_id)
    rng = random.Random(seed)
    own = sample_instructions(ctx.pool.get(genre, "test"), n + len(contrast), rng)
    negative_genres = _negative_genres(ctx.config)
    negatives = {g: iter(sample_instructions(ctx.pool.get(g, "test"), negative_genres.count(g), rng))
                 for g in dict.fromkeys(negative_genres)}
    negative_inputs = [(g, next(negatives[g])) for g in negative_genres]
    values = {"concept": concept.concept}

    positive_requests = [ctx.llm_request(WITH_CONCEPT, {**values, "instruction": text}, "latent_positive", concept,
                                         derive_seed(seed, "positive", i)) for i, text in enumerate(own[:n])]
    negative_requests = [ctx.llm_request(WITHOUT_CONCEPT, {**values, "instruction": text}, "latent_negative",
                                         concept, derive_seed(seed, "negative", i))
                         for i, (_, text) in enumerate(negative_inputs)]
    hard_requests = [ctx.llm_request(WITH_CONTRAST, {**values, "instruction": text, "word": word, "meaning": meaning,
                                                     "final": FINAL_TAG}, "hard_negative", concept,
                                     derive_seed(seed, "hard", word))
                     for text, (word, meaning) in zip(own[n:], contrast)]

    def check_hard(completion: Completion) -> tuple[str | None, str | None]:
        return ctx.check_llm_response(Completion(text=strip_leading_tags(completion.text), model=completion.model))

    positives, negatives_asked, hard = await asyncio.gather(
        ctx.ask_llm(positive_requests, "latent_positive", [f"positive[{i}]" for i in range(n)]),
        ctx.ask_llm(negative_requests, "latent_negative", [f"negative[{i}]" for i in range(n)]),
        ctx.ask_llm(hard_requests, "hard_negative", [f"{w}//{m}" for w, m in contrast], check_hard),
    )
    unit.record("latent_positive", len(positive_requests), positives)
    unit.record("latent_negative", len(negative_requests), negatives_asked)
    unit.record("hard_negative", len(hard_requests), hard)
    model, sae = ctx.llm.model_name, sae_fields(concept)
    unit.rows += [_row(text, out, concept.concept, genre, "positive", concept.concept_id, WITH_CONCEPT, model, seed,
                       **sae) for text, out in zip(own[:n], positives.values) if out is not None]
    # A negative keeps the concept it avoids; its genre is its instruction's genre.
    unit.rows += [_row(text, out, concept.concept, g, "negative", concept.concept_id, WITHOUT_CONCEPT, model, seed,
                       **sae) for (g, text), out in zip(negative_inputs, negatives_asked.values) if out is not None]
    unit.rows += [_row(text, out, f"{word}//{meaning}", genre, "hard negative", concept.concept_id, WITH_CONTRAST,
                       model, seed, **sae)
                  for text, (word, meaning), out in zip(own[n:], contrast, hard.values) if out is not None]
    return unit


def steering_dataset_name(source: str) -> str:
    return "AlpacaEval" if source == PAPER_POOLS["general"] else source


def check_steering_pool(pool: Sequence[str], pool_source: str, n: int) -> None:
    if n > len(pool):
        raise InputError(f"steering_num_of_examples={n} exceeds the {len(pool)} instructions of the steering pool "
                         f"({pool_source}); lower it or use a larger pool.")


def steering_prompt_rows(concept: Concept, pool: Sequence[str], pool_source: str, n: int, *,
                         steering_prompt: str | None = None, template: PromptTemplate = FALLBACK_STEERING_PROMPT,
                         model: str | None = None) -> list[dict[str, Any]]:
    """`n` instructions sampled like AxBench (`DataFrame.sample(n, random_state=concept_id)`), the first half
    for factor selection, the rest held out; `steering_prompt` (default: the fixed sentence naming the concept)
    is what prompt steering prepends."""
    check_steering_pool(pool, pool_source, n)
    seed = concept.concept_id
    picks = np.random.RandomState(seed).choice(len(pool), size=n, replace=False)
    prompt = steering_prompt if steering_prompt is not None else FALLBACK_STEERING_PROMPT.render(concept=concept.concept)
    return [{"dataset_name": steering_dataset_name(pool_source), "concept_id": concept.concept_id,
             "input_concept": concept.concept, "input_id": input_id, "original_prompt": pool[int(pick)],
             "half": HALVES[0] if input_id < n // 2 else HALVES[1], "steering_prompt": prompt,
             **sae_fields(concept), "template_hash": template.version, "generator_model": model, "sample_seed": seed}
            for input_id, pick in enumerate(picks)]


async def steering_rows(ctx: Context, concept: Concept) -> Unit:
    """The concept's steering prompts (`steering_prompt_rows`), with an LLM-written steering prompt when the
    config asks for one."""
    unit = Unit()
    n = ctx.config.steering_num_of_examples
    check_steering_pool(ctx.pool.general, ctx.pool.sources["general"], n)
    template, prompt, model = FALLBACK_STEERING_PROMPT, None, None
    if ctx.config.steering_prompts_from_llm:
        request = ctx.llm_request(STEERING_PROMPT, {"concept": concept.concept}, "steering_prompt", concept,
                                  derive_seed(ctx.config.seed, "steering_prompt", concept.concept_id))
        asked = await ask(ctx.llm, [request], check_response, step="steering_prompt", items=["steering prompt"],
                          max_reasks=ctx.config.max_reasks)
        unit.record("steering_prompt", 1, asked)
        if asked.values[0] is not None:
            template, prompt, model = STEERING_PROMPT, asked.values[0], ctx.llm.model_name
        else:
            unit.notes.append(f"concept {concept.concept_id}: the LLM wrote no steering prompt; the fixed one is used")
    unit.rows = steering_prompt_rows(concept, ctx.pool.general, ctx.pool.sources["general"], n,
                                     steering_prompt=prompt, template=template, model=model)
    unit.counts["steering"] = {"requested": n, "produced": n, "failed": 0, "reasked": 0}
    return unit


async def preference_pairs(ctx: Context, concept: Concept, positives: Sequence[dict[str, Any]]) -> Unit:
    """Each training positive as the winning output, the target model's own greedy answer as the losing one."""
    unit = Unit()
    requests = [ctx.target_request(row["input"], "preference_losing", concept.concept_id) for row in positives]
    asked = await ask(ctx.target, requests, _nonempty, step="preference_losing",
                      items=[f"pair[{i}]" for i in range(len(requests))], max_reasks=0,
                      desc=f"concept {concept.concept_id} losing outputs")
    unit.record("preference_losing", len(requests), asked)
    for row, losing in zip(positives, asked.values):
        if losing is not None:
            pair = {("winning_output" if key == "output" else key): value for key, value in row.items()}
            unit.rows.append({**pair, "losing_output": losing})
    return unit
