"""Step `contrast`: contrast concepts for hard negatives (spec §1.5 step 1).

related words of the concept → another common meaning of each word → keep the meanings the LLM judges
unrelated to the concept. Meanings that are `<NONE>`, empty or a single word are dropped by design
(counted, not failures); answers that cannot be read at all are re-asked and then reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from axdata.concepts import Concept
from axdata.generation.asking import Failure, ask, clean, derive_seed
from axdata.generation.templates import DISTINCT, NONE_MARKER, OTHER_MEANING, RELATED_WORDS
from axdata.llm.types import ChatBackend, ChatRequest, Completion, SamplingParams

_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)]|[a-z][.)])\s*", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_][\w'-]*")


@dataclass
class ContrastResult:
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (word, other meaning), kept
    words: list[str] = field(default_factory=list)
    dropped_meanings: int = 0  # <NONE>, empty or single-word meanings
    rejected: int = 0  # meanings the distinctness check found related to the concept
    failures: list[Failure] = field(default_factory=list)
    reasks: int = 0


def parse_words(text: str, limit: int) -> list[str] | None:
    """Single words, one per line (bullets and numbering removed), de-duplicated; [] for <NONE>;
    None when the answer lists nothing usable.

    >>> parse_words("1. Bridge\\n2. bridge\\n- san francisco\\n* Golden", 10)
    ['bridge', 'golden']
    """
    if NONE_MARKER.lower() in text.lower():
        return []
    words: list[str] = []
    for line in text.splitlines():
        candidate = clean(_BULLET.sub("", line)).rstrip(".,;:").lower()
        if _WORD.fullmatch(candidate) and candidate not in words:
            words.append(candidate)
    return words[:limit] or None


def parse_verdict(text: str) -> bool | None:
    """True when "yes" follows the last "answer" (AxBench's rule), None when there is no "answer".

    >>> parse_verdict("They differ. Answer: <YES>"), parse_verdict("Answer: <NO>"), parse_verdict("yes")
    (True, False, None)
    """
    lowered = text.lower()
    position = lowered.rfind("answer")
    if position == -1:
        return None
    return "yes" in lowered[position:]


def _request(template, values: dict[str, str], purpose: str, concept: Concept, seed: int, temperature: float,
             max_tokens: int, *key: object) -> ChatRequest:
    return ChatRequest.user(
        template.render(**values), purpose=purpose, template_hash=template.version,
        concept_id=concept.concept_id,
        params=SamplingParams(temperature=temperature, max_tokens=max_tokens,
                              seed=derive_seed(seed, purpose, concept.concept_id, *key)),
    )


async def contrast_concepts(llm: ChatBackend, concept: Concept, *, seed: int, temperature: float,
                            max_words: int, max_reasks: int) -> ContrastResult:
    result = ContrastResult()
    if max_words == 0:
        return result

    def check_words(completion: Completion) -> tuple[list[str] | None, str | None]:
        words = parse_words(completion.text, max_words)
        return (words, None) if words is not None else (None, "no single words in the answer")

    words_request = _request(RELATED_WORDS, {"concept": concept.concept, "none": NONE_MARKER}, "contrast_words",
                             concept, seed, temperature, 96)
    asked = await ask(llm, [words_request], check_words, step="contrast_words", items=["related words"],
                      max_reasks=max_reasks)
    result.failures += asked.failures
    result.reasks += asked.reasks
    result.words = asked.values[0] or []
    if not result.words:
        return result

    meaning_requests = [
        _request(OTHER_MEANING, {"word": word, "concept": concept.concept, "none": NONE_MARKER},
                 "contrast_meaning", concept, seed, temperature, 48, word)
        for word in result.words
    ]
    answers = await llm.complete_many(meaning_requests, desc=f"concept {concept.concept_id} meanings")
    meanings: list[tuple[str, str]] = []
    for word, completion in zip(result.words, answers):
        meaning = clean(completion.text).rstrip(".").strip()
        if NONE_MARKER.lower() in meaning.lower() or len(meaning.split()) < 2:
            result.dropped_meanings += 1
        else:
            meanings.append((word, meaning))
    if not meanings:
        return result

    def check_verdict(completion: Completion) -> tuple[bool | None, str | None]:
        verdict = parse_verdict(completion.text)
        return (verdict, None) if verdict is not None else (None, "no 'Answer:' verdict in the answer")

    verdict_requests = [
        _request(DISTINCT, {"meaning": meaning, "concept": concept.concept}, "contrast_filter", concept, seed,
                 temperature, 160, word)
        for word, meaning in meanings
    ]
    verdicts = await ask(llm, verdict_requests, check_verdict, step="contrast_filter",
                         items=[f"{word}//{meaning}" for word, meaning in meanings], max_reasks=max_reasks)
    result.failures += verdicts.failures
    result.reasks += verdicts.reasks
    for pair, verdict in zip(meanings, verdicts.values):
        if verdict:
            result.pairs.append(pair)
        elif verdict is False:
            result.rejected += 1
    return result
