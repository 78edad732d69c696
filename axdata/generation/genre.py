"""Step `genre`: which instructions a concept's examples answer (text, code or math).

The LLM answers with a JSON object constrained to the three genres. When the answer still does not
validate, AxBench's parse rule reads the raw text instead (spec §1.3): "none" anywhere → text; else
every genre named in it, in text/code/math order; nothing named → text. The first genre is "the" genre.
"""

from __future__ import annotations

import logging

from axdata.concepts import Concept
from axdata.generation.asking import derive_seed
from axdata.generation.templates import GENRE, NONE_MARKER
from axdata.llm.types import ChatBackend, ChatRequest, SamplingParams, StructuredOutputError
from axdata.schema import GENRES

logger = logging.getLogger(__name__)

PURPOSE = "genre"
GENRE_SCHEMA = {
    "type": "object",
    "properties": {"genre": {"type": "string", "enum": list(GENRES)}},
    "required": ["genre"],
    "additionalProperties": False,
}


def parse_genres(text: str) -> tuple[str, ...]:
    """AxBench's rule for a free-text genre answer.

    >>> parse_genres("<NONE>"), parse_genres("Code, maybe math"), parse_genres("poetry")
    (('text',), ('code', 'math'), ('text',))
    """
    lowered = text.lower()
    if "none" in lowered:
        return ("text",)
    found = tuple(genre for genre in GENRES if genre in lowered)
    return found or ("text",)


def genre_request(concept: Concept, seed: int, temperature: float) -> ChatRequest:
    return ChatRequest.user(
        GENRE.render(concept=concept.concept, none=NONE_MARKER), purpose=PURPOSE, json_schema=GENRE_SCHEMA,
        template_hash=GENRE.version, concept_id=concept.concept_id,
        params=SamplingParams(temperature=temperature, max_tokens=32, seed=derive_seed(seed, PURPOSE, concept.concept_id)),
    )


async def determine_genre(llm: ChatBackend, concept: Concept, seed: int, temperature: float
                          ) -> tuple[tuple[str, ...], str | None]:
    """The concept's genres (first = the genre) and, when the parse-rule fallback was used, why."""
    try:
        completion = await llm.complete(genre_request(concept, seed, temperature))
    except StructuredOutputError as err:
        genres = parse_genres(err.text)
        note = f"structured answer invalid ({err.reason.split(';')[0]}); parse rule gave {list(genres)}"
        logger.warning("Concept %d %r: %s", concept.concept_id, concept.concept, note)
        return genres, note
    return (completion.parsed["genre"],), None
