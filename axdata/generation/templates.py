"""Prompt templates of the generation steps, in our own words, each versioned by a hash of its text.

A template's `version` (a content hash) goes into the LLM cache key (`ChatRequest.template_hash`) and
into the `template_hash` column of every row it produced, so editing a template re-asks the LLM for
exactly the rows it affects and the change stays visible in the data.

The contracts follow AxBench (spec §1.3): the genre answer is one of text/code/math, related words come
one per line, a distinctness verdict ends with "Answer: <YES>" or "Answer: <NO>", a hard negative is
introduced by a <FINAL> tag, and "<NONE>" means "nothing sensible to say".
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from axdata.hashing import content_hash

NONE_MARKER = "<NONE>"
FINAL_TAG = "<FINAL>"


@dataclass(frozen=True)
class PromptTemplate:
    """A named prompt with `$placeholders` (string.Template syntax, so code in concepts needs no escaping)."""

    name: str
    text: str
    version: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", content_hash({"name": self.name, "text": self.text}))

    def render(self, **values: str) -> str:
        try:
            return string.Template(self.text).substitute(values)
        except KeyError as err:
            raise ValueError(
                f"Template {self.name!r} needs the value {err.args[0]!r}; pass it to render()."
            ) from None


GENRE = PromptTemplate(
    "genre",
    """Decide which kind of writing a concept belongs to: "text" (natural language, topics, style), \
"code" (programming, software, markup) or "math" (numbers, equations, mathematical reasoning).

Examples:
- "references to the Golden Gate Bridge" -> text
- "Python list comprehensions" -> code
- "fractions and ratios in word problems" -> math
- "HTML closing tags" -> code

Concept: "$concept"
Reply with the single best genre: text, code or math. If none fits, reply $none.""",
)

RELATED_WORDS = PromptTemplate(
    "related_words",
    """List up to 10 common English words that are closely tied to this concept: "$concept".
Each must be a single word. Write one word per line and nothing else.
If the concept is too vague or too technical for that, reply $none.""",
)

OTHER_MEANING = PromptTemplate(
    "other_meaning",
    """The word "$word" is related to the concept "$concept".
Give one other common meaning of "$word" that has nothing to do with that concept, as a short phrase.
Reply with the meaning only. If the word has no such meaning, reply $none.""",
)

DISTINCT = PromptTemplate(
    "distinct",
    """Meaning A: "$meaning"
Concept B: "$concept"
Is meaning A completely unrelated to concept B? Think it through briefly, then end with \
"Answer: <YES>" if they are unrelated or "Answer: <NO>" if they are related.""",
)

WITH_CONCEPT = PromptTemplate(
    "with_concept",
    """Respond to the instruction below, and weave in content about this concept: "$concept".
Do not copy the wording of the concept description; make the response clearly about the concept \
even where it fits the instruction poorly. Return only the response.

Instruction: $instruction""",
)

WITHOUT_CONCEPT = PromptTemplate(
    "without_concept",
    """Respond to the instruction below in a natural way. Do not mention or allude to this concept: \
"$concept". Return only the response.

Instruction: $instruction""",
)

WITH_CONTRAST = PromptTemplate(
    "with_contrast",
    """Respond to the instruction below. Somewhere in the middle of the response, use the word "$word" \
in the sense "$meaning". Stay away from this concept: "$concept".
Write $final, then the response.

Instruction: $instruction""",
)

STEERING_PROMPT = PromptTemplate(
    "steering_prompt",
    """Write an instruction for an AI assistant that makes it bring up "$concept" in every answer, \
even when the question is about something else. Return only the instruction.""",
)

# Used when the LLM does not write steering prompts (AxBench stores a fixed sentence in that case).
FALLBACK_STEERING_PROMPT = PromptTemplate(
    "fallback_steering_prompt",
    "Whatever the question, answer with content related to $concept.",
)

ALL_TEMPLATES: tuple[PromptTemplate, ...] = (
    GENRE, RELATED_WORDS, OTHER_MEANING, DISTINCT, WITH_CONCEPT, WITHOUT_CONCEPT, WITH_CONTRAST,
    STEERING_PROMPT, FALLBACK_STEERING_PROMPT,
)


def template_versions() -> dict[str, str]:
    """`{template name: version hash}` of every generation template: recorded in reports and cards."""
    return {template.name: template.version for template in ALL_TEMPLATES}
