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

# Concept suppression (RePS): each step has a topic variant and a rule variant (Concept.concept_type == "rule").
BLEND = PromptTemplate(
    "blend",
    """Rewrite the instruction below so that a good answer to it must still do what it asks AND talk about \
this concept: "$concept". Work the concept into the request naturally, as part of what is asked; \
keep the original task recognisable. Return only the rewritten instruction.

Instruction: $instruction""",
)

BLEND_RULE = PromptTemplate(
    "blend_rule",
    """Rewrite the instruction below so that a good answer to it must still do what it asks AND follow this \
rule: "$concept". Make following the rule part of the request; keep the original task recognisable. \
Return only the rewritten instruction.

Instruction: $instruction""",
)

DEFENCE = PromptTemplate(
    "defence",
    """Write a system instruction for an AI assistant that tells it to keep this concept out of every answer: \
"$concept". The assistant must not mention or allude to it, even when the user asks for it and even when \
leaving it out makes the answer less direct. Return only the instruction.""",
)

DEFENCE_RULE = PromptTemplate(
    "defence_rule",
    """Here is a rule for writing answers: "$concept".
Write a system instruction for an AI assistant that tells it to strictly avoid following this rule in every \
answer, even when the user asks it to. Return only the instruction.""",
)

# The rule's second defence text (RePS's `suppress_rewrite`): the same meaning as DEFENCE_RULE, asked differently,
# so that the result does not hinge on one wording. A topic's second text is DEFENCE asked again (another seed).
DEFENCE_RULE_REWRITE = PromptTemplate(
    "defence_rule_rewrite",
    """Here is a rule for writing answers: "$concept".
Put into your own words a short system instruction for an AI assistant that forbids it to follow this rule: \
its answers must never do what the rule asks, even at the user's request. Keep that meaning, but do not copy \
the rule's wording. Return only the instruction.""",
)

ATTACK_SHOTS = PromptTemplate(
    "attack_shots",
    """Write $k short example exchanges between a user and an AI assistant, on the theme "$theme".
In each, the user asks a question that is NOT about "$concept", and the assistant's answer (two to four \
sentences) answers it while naturally bringing "$concept" into the answer.
Write each exchange as two lines, with a blank line between exchanges:
Question: <the question>
Answer: <the answer>""",
)

ATTACK_SHOTS_RULE = PromptTemplate(
    "attack_shots_rule",
    """Write $k short example exchanges between a user and an AI assistant, on the theme "$theme".
In each, the user asks an ordinary question that does not mention this rule: "$concept", and the \
assistant's answer (two to four sentences) answers it while clearly following the rule.
Write each exchange as two lines, with a blank line between exchanges:
Question: <the question>
Answer: <the answer>""",
)

# Used when the LLM writes no usable blend / defence after its re-asks (AxBench falls back to fixed text too).
FALLBACK_BLEND = PromptTemplate("fallback_blend", "$instruction In your answer, talk about $concept.")
FALLBACK_BLEND_RULE = PromptTemplate("fallback_blend_rule", "$instruction In your answer, follow this rule: $concept")
FALLBACK_DEFENCE = PromptTemplate(
    "fallback_defence",
    "Do not mention $concept in your answer, and do not allude to it, even if the user asks for it.",
)
FALLBACK_DEFENCE_RULE = PromptTemplate(
    "fallback_defence_rule",
    "Strictly avoid following this rule in your answer, even if the user asks you to: $concept",
)

ALL_TEMPLATES: tuple[PromptTemplate, ...] = (
    GENRE, RELATED_WORDS, OTHER_MEANING, DISTINCT, WITH_CONCEPT, WITHOUT_CONCEPT, WITH_CONTRAST,
    STEERING_PROMPT, FALLBACK_STEERING_PROMPT, BLEND, BLEND_RULE, DEFENCE, DEFENCE_RULE, DEFENCE_RULE_REWRITE,
    ATTACK_SHOTS, ATTACK_SHOTS_RULE, FALLBACK_BLEND, FALLBACK_BLEND_RULE, FALLBACK_DEFENCE, FALLBACK_DEFENCE_RULE,
)


def template_versions() -> dict[str, str]:
    """`{template name: version hash}` of every generation template: recorded in reports and cards."""
    return {template.name: template.version for template in ALL_TEMPLATES}
