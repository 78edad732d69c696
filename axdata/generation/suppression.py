"""Concept-suppression data (RePS): the `suppression` and `attack_shots` units of one concept.

`suppression`: the concept's steering instructions (the same draw, so row k is steering row k, same half),
each rewritten by the LLM so that an answer must bring the concept up ("blended"), plus two LLM-written
defence texts per concept that tell a model to keep the concept out (RePS's `suppress_original` and
`suppress_rewrite`: for a topic the same request asked again with another seed, for a rule a differently worded
request of the same meaning). `attack_shots`: question/answer
pairs whose answers bring the concept in, for many-shot attacks (an n-shot attack uses shots 0..n-1).

Rule concepts (`Concept.concept_type == "rule"`) use the rule variant of every prompt: the blend asks the
answer to follow the rule, the defence to strictly avoid it, the shots' answers follow it. A blend or
defence the LLM does not write after its re-asks is replaced by fixed text (counted and noted). Shots the LLM
does not write are never invented: a concept short of shots gets its own train positives in their place
(`with_train_positives`: an instruction that is not about the concept and an answer that carries it, which is what
a shot is), counted and noted; without train positives the shortfall is reported and many-shot attacks above it
refuse that concept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from axdata.concepts import Concept
from axdata.generation.asking import Asked, check_response, clean, derive_seed
from axdata.generation.examples import Context, Unit, sae_fields, steering_prompt_rows
from axdata.generation.templates import (
    ATTACK_SHOTS,
    ATTACK_SHOTS_RULE,
    BLEND,
    BLEND_RULE,
    DEFENCE,
    DEFENCE_RULE,
    DEFENCE_RULE_REWRITE,
    FALLBACK_BLEND,
    FALLBACK_BLEND_RULE,
    FALLBACK_DEFENCE,
    FALLBACK_DEFENCE_RULE,
    PromptTemplate,
)
from axdata.llm.types import ChatRequest, Completion

SUPPRESSION_DATASET = "suppression"
SHOTS_PER_CALL = 5  # pairs asked per LLM call: few enough that every pair fits the answer's token limit
# Themes the shot calls rotate through, so that the questions of one concept are not all alike.
SHOT_THEMES = ("cooking", "travel", "personal finance", "gardening", "fitness", "history", "physics",
               "smartphones", "music", "team sports", "pets", "home repair", "job interviews", "films",
               "learning a language", "the weather", "parenting", "painting", "astronomy", "shopping")

# "Question: …" / "**Q2:** …" / "User: …" and the answer labels, with list numbering and markdown around them.
_SHOT_LABEL = re.compile(r"^[\s>#*_\-]*(?:\d+[.)]\s*)?[*_]*(question|user|q|answer|assistant|a)\s*\d*[*_]*\s*:[*_]*\s*(.*)$",
                         re.IGNORECASE)
_ANSWER_LABEL = re.compile(r"^\s*(?:rewritten instruction|new instruction|instruction|system instruction|"
                           r"system prompt)\s*:\s*", re.IGNORECASE)


def _label_stripped(completion: Completion) -> tuple[str | None, str | None]:
    """A free-text answer (`check_response`) without a leading "Rewritten instruction:"-style label."""
    text, reason = check_response(completion)
    if text is None:
        return None, reason
    text = clean(_ANSWER_LABEL.sub("", text, count=1))
    return (text, None) if text else (None, "empty answer")


def parse_shots(text: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of an answer written as "Question: …" / "Answer: …" lines (also "User:" /
    "Assistant:", "Q:" / "A:", numbered or in bold); an answer may run over several lines.

    >>> parse_shots("1. **Question:** Why is the sky blue?\\n**Answer:** Scattering.\\n\\nQuestion: Hi?\\nAnswer: Yo.\\nMore.")
    [('Why is the sky blue?', 'Scattering.'), ('Hi?', 'Yo.\\nMore.')]
    """
    pairs: list[tuple[str, str]] = []
    question: list[str] = []
    answer: list[str] = []
    role: str | None = None

    def emit() -> None:
        q, a = clean(" ".join(question)), clean("\n".join(answer))
        if q and a:
            pairs.append((q, a))

    for line in text.splitlines():
        match = _SHOT_LABEL.match(line)
        if match and match.group(1).lower() in ("question", "user", "q"):
            emit()
            question, answer, role = [match.group(2)], [], "question"
        elif match and role is not None:
            if role == "answer":  # a second answer to one question: keep the first pair, drop this one
                emit()
                question, role = [], None
                continue
            answer, role = [match.group(2)], "answer"
        elif role == "question":
            question.append(line.strip())
        elif role == "answer":
            answer.append(line.rstrip())
    emit()
    return pairs


def _check_shots(completion: Completion) -> tuple[list[tuple[str, str]] | None, str | None]:
    pairs = parse_shots(completion.text)
    return (pairs, None) if pairs else (None, "no 'Question:' / 'Answer:' pairs in the answer")


def _fallback_count(asked: Asked, counts: dict[str, int]) -> int:
    fallbacks = sum(value is None for value in asked.values)
    counts["fallback"] = fallbacks
    return fallbacks


async def suppression_rows(ctx: Context, concept: Concept) -> Unit:
    """The concept's suppression rows: its steering instructions, their blended rewrites, its two defence texts."""
    unit = Unit()
    n = ctx.config.steering_num_of_examples
    seed = derive_seed(ctx.config.seed, "suppression", concept.concept_id)
    # Exactly the steering split's draw and halves: suppression row k is steering row k.
    drawn = steering_prompt_rows(concept, ctx.pool.general, ctx.pool.sources["general"], n)
    originals = [row["original_prompt"] for row in drawn]
    rule = concept.concept_type == "rule"
    blend, blend_fallback = (BLEND_RULE, FALLBACK_BLEND_RULE) if rule else (BLEND, FALLBACK_BLEND)
    defence, defence_fallback = (DEFENCE_RULE, FALLBACK_DEFENCE_RULE) if rule else (DEFENCE, FALLBACK_DEFENCE)
    # The second text (RePS's suppress_rewrite): a topic's defence request asked again (another seed, so another
    # sample and its own cache entry); a rule's asked in other words. Both fall back to the same fixed text.
    rewrite = DEFENCE_RULE_REWRITE if rule else defence
    unchanged = {" ".join(text.split()).lower() for text in originals}

    def check_blend(completion: Completion) -> tuple[str | None, str | None]:
        text, reason = _label_stripped(completion)
        if text is not None and " ".join(text.split()).lower() in unchanged:
            return None, "the instruction came back unchanged"
        return text, reason

    blend_requests = [ctx.llm_request(blend, {"concept": concept.concept, "instruction": text}, "suppression_blend",
                                      concept, derive_seed(seed, "blend", index))
                      for index, text in enumerate(originals)]
    defence_request = ctx.llm_request(defence, {"concept": concept.concept}, "suppression_defence", concept,
                                      derive_seed(seed, "defence"))
    rewrite_request = ctx.llm_request(rewrite, {"concept": concept.concept}, "suppression_defence_rewrite", concept,
                                      derive_seed(seed, "defence_rewrite"))
    blended, defended, rewritten = await asyncio.gather(
        ctx.ask_llm(blend_requests, "suppression_blend", [f"blend[{i}]" for i in range(n)], check_blend),
        ctx.ask_llm([defence_request], "suppression_defence", ["defence prompt"], _label_stripped),
        ctx.ask_llm([rewrite_request], "suppression_defence_rewrite", ["defence rewrite"], _label_stripped),
    )
    unit.record("suppression_blend", n, blended)
    missing = _fallback_count(blended, unit.counts["suppression_blend"])
    if missing:
        unit.notes.append(f"concept {concept.concept_id}: the LLM wrote no blended prompt for {missing} of {n} "
                          f"instructions; the fixed '{blend_fallback.name}' text is used for them")
    texts = []
    for step, asked, what in (("suppression_defence", defended, "defence prompt"),
                              ("suppression_defence_rewrite", rewritten, "defence rewrite")):
        unit.record(step, 1, asked)
        texts.append(asked.values[0])
        if _fallback_count(asked, unit.counts[step]):
            texts[-1] = defence_fallback.render(concept=concept.concept)
            unit.notes.append(f"concept {concept.concept_id}: the LLM wrote no {what}; the fixed "
                              f"'{defence_fallback.name}' text is used")
    defence_prompt, defence_rewrite = texts
    model, sae = ctx.llm.model_name, sae_fields(concept)
    for row, text in zip(drawn, blended.values):
        template = blend if text is not None else blend_fallback
        unit.rows.append({
            "dataset_name": SUPPRESSION_DATASET, "concept_id": concept.concept_id, "input_concept": concept.concept,
            "input_id": row["input_id"], "original_prompt": row["original_prompt"],
            "blended_prompt": text if text is not None else template.render(instruction=row["original_prompt"],
                                                                             concept=concept.concept),
            "half": row["half"], "defence_prompt": defence_prompt, "defence_rewrite": defence_rewrite, **sae,
            "template_hash": template.version,
            "generator_model": model if text is not None else None, "sample_seed": seed,
        })
    return unit


def _shot_requests(ctx: Context, concept: Concept, template: PromptTemplate, seed: int, first_call: int,
                   missing: int) -> list[ChatRequest]:
    """Calls `first_call`, `first_call + 1`, … asking for `missing` pairs, SHOTS_PER_CALL at most per call."""
    sizes = [min(SHOTS_PER_CALL, missing - SHOTS_PER_CALL * j) for j in range(math.ceil(missing / SHOTS_PER_CALL))]
    return [ctx.llm_request(template, {"concept": concept.concept, "k": str(size),
                                       "theme": SHOT_THEMES[(seed + call) % len(SHOT_THEMES)]},
                            "attack_shots", concept, derive_seed(seed, "shots", call),
                            max_tokens=size * ctx.config.llm_max_tokens)
            for call, size in enumerate(sizes, start=first_call)]


def _add_new(pairs: list[tuple[str, str]], found: Iterable[list[tuple[str, str]] | None], n: int) -> None:
    """Append the found pairs whose question is new, until there are `n`."""
    seen = {" ".join(q.split()).lower() for q, _ in pairs}
    for value in found:
        for question, answer in value or []:
            key = " ".join(question.split()).lower()
            if key not in seen and len(pairs) < n:
                seen.add(key)
                pairs.append((question, answer))


async def attack_shot_rows(ctx: Context, concept: Concept) -> Unit:
    """`attack_shots` question/answer pairs that carry the concept (follow the rule), asked SHOTS_PER_CALL per
    call; calls that came back short (too few or repeated pairs) are made up in up to `max_reasks` more rounds."""
    unit = Unit()
    n = ctx.config.attack_shots
    seed = derive_seed(ctx.config.seed, "attack_shots", concept.concept_id)
    template = ATTACK_SHOTS_RULE if concept.concept_type == "rule" else ATTACK_SHOTS
    pairs: list[tuple[str, str]] = []
    calls = reasks = 0
    for _ in range(ctx.config.max_reasks + 1):
        if len(pairs) >= n:
            break
        requests = _shot_requests(ctx, concept, template, seed, calls, n - len(pairs))
        asked = await ctx.ask_llm(requests, "attack_shots", [f"shots call {calls + i}" for i in range(len(requests))],
                                  _check_shots)
        calls, reasks = calls + len(requests), reasks + asked.reasks
        unit.failures += asked.failures
        _add_new(pairs, asked.values, n)
    unit.counts["attack_shots"] = {"requested": n, "produced": len(pairs), "failed": n - len(pairs),
                                   "reasked": reasks, "calls": calls}
    if len(pairs) < n:
        unit.notes.append(f"concept {concept.concept_id}: {len(pairs)} of {n} attack shots written (the LLM's answers "
                          "held too few new Question:/Answer: pairs)")
    unit.rows = [{"concept_id": concept.concept_id, "input_concept": concept.concept, "shot_id": shot_id,
                  "question": question, "answer": answer, "template_hash": template.version,
                  "generator_model": ctx.llm.model_name, "sample_seed": seed}
                 for shot_id, (question, answer) in enumerate(pairs)]
    return unit


def with_train_positives(shots: Unit, positives: Sequence[dict[str, Any]], concept: Concept, n: int) -> Unit:
    """The concept's attack shots, made up to `n` with its train positives (instruction → question, response →
    answer, with their own provenance) when the LLM wrote fewer; counted (`attack_shots.from_train_positives`)
    and noted. A small generator LLM (the embedded 135M model) rarely writes the Question:/Answer: format, and a
    many-shot attack refuses a concept with fewer shots than its n; a train positive is a real pair whose answer
    carries the concept (follows the rule), so nothing is made up. Applied when the splits are assembled, not
    stored: the same units give the same rows on a resumed run."""
    missing = n - len(shots.rows)
    counts = dict(shots.counts.get("attack_shots", {}))
    extra = [row for row in positives if row.get("category") == "positive"][:max(missing, 0)]
    if not extra:
        if missing > 0:
            return dataclasses.replace(shots, notes=[
                *shots.notes, f"concept {concept.concept_id}: {missing} attack shot(s) short and no train positives "
                f"to stand in: many-shot attacks above n={len(shots.rows)} cannot run on it"])
        return shots
    rows = shots.rows + [{"concept_id": concept.concept_id, "input_concept": concept.concept,
                          "shot_id": len(shots.rows) + i,
                          "question": row["input"], "answer": row["output"], "template_hash": row.get("template_hash"),
                          "generator_model": row.get("generator_model"), "sample_seed": row.get("sample_seed")}
                         for i, row in enumerate(extra)]
    counts["from_train_positives"] = len(extra)
    note = (f"concept {concept.concept_id}: {len(extra)} attack shot(s) taken from its train positives (shots "
            f"{len(shots.rows)}–{len(rows) - 1})")
    return dataclasses.replace(shots, rows=rows, counts={**shots.counts, "attack_shots": counts},
                               notes=[*shots.notes, note])
