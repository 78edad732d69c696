"""Prompt baselines (AxBench `prompt.py`, spec §3.11): steering and detection without any vector.

- PromptSteering: one LLM call per concept writes an instruction that makes a model bring the concept up;
  steering inference prepends it to the user turn (`"<instruction>\\n\\nQuestion: <prompt>"`) and ignores
  the factor. The instruction is stored per concept in `Concept.extra["steering_prompt"]` and in
  `config["steering_prompts"]`; `weight` is all zeros (adding it is a no-op).
- PromptDetection: the target model itself rates how relevant a text is to the concept (0–2, the judge's
  concept-relevance contract, "Rating: [[score]]"); detection-only, nothing to train. Unparsable answers are
  NaN and counted, never silently 0 or −1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from axdata.concepts import Concept
from axdata.generation.templates import FALLBACK_STEERING_PROMPT, STEERING_PROMPT, PromptTemplate
from axdata.llm.types import ChatBackend, ChatRequest, SamplingParams
from axmethods.dictionary import SteeringDictionary
from axmethods.methods.base import Method, MethodConfig, MethodConfigError
from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

RELEVANCE = PromptTemplate(
    "concept_relevance",
    """Please act as an impartial judge and decide whether the text fragment below clearly incorporates \
the concept "$concept". Ignore grammar and coherence. First explain briefly, then rate: 0 if the concept is \
absent, 1 if it is present only minimally or awkwardly, 2 if it is fully and naturally incorporated. End with \
the rating in exactly this format: "Rating: [[score]]".

Text fragment: $text""",
)

_RATING = re.compile(r"Rating:(.*)", re.IGNORECASE)


@dataclass
class PromptSteeringConfig(MethodConfig):
    llm_prompts: bool = field(default=True, metadata={"help": "Ask the LLM for each concept's instruction; false "
                                                              "stores AxBench's fixed fallback sentence."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the instruction writer."})
    max_tokens: int = field(default=256, metadata={"help": "Longest instruction, in tokens."})


@dataclass
class PromptDetectionConfig(MethodConfig):
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rating (paper: 1.0)."})
    max_tokens: int = field(default=512, metadata={"help": "Longest rating answer (paper: 512)."})


class PromptSteering(Method):
    name = "prompt-steering"
    config_class = PromptSteeringConfig
    detection_activation = "external"
    steering = "prompt"
    unit_norm = False

    def __init__(self, config: PromptSteeringConfig | None = None, backend: ChatBackend | None = None) -> None:
        super().__init__(config)
        self.backend = backend

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringDictionary:
        prompts = self.steering_prompts(concepts)
        with_prompts = [dataclasses.replace(c, extra={**c.extra, "steering_prompt": p})
                        for c, p in zip(concepts, prompts)]
        template = STEERING_PROMPT if self.config.llm_prompts else FALLBACK_STEERING_PROMPT
        return self.dictionary(
            target, with_prompts, layer, torch.zeros(len(concepts), target.hidden_size),
            extra_config={"detector": "none", "steering_prompts": {str(c.concept_id): p for c, p in
                                                                    zip(concepts, prompts)},
                          "template": template.name, "template_hash": template.version,
                          "llm": self.backend.model_name if self.backend is not None and self.config.llm_prompts
                          else None},
        )

    def steering_prompts(self, concepts: Sequence[Concept]) -> list[str]:
        cfg = self.config
        if not cfg.llm_prompts:
            return [FALLBACK_STEERING_PROMPT.render(concept=c.concept) for c in concepts]
        if self.backend is None:
            raise MethodConfigError("prompt-steering needs an LLM to write steering instructions: pass "
                                    "backend=<ChatBackend> (OpenAIChatClient or TransformersChatBackend), or set "
                                    "llm_prompts=false for AxBench's fixed fallback sentence.")
        params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
        requests = [ChatRequest.user(STEERING_PROMPT.render(concept=c.concept), purpose="steering_prompt",
                                     params=params, template_hash=STEERING_PROMPT.version, concept_id=c.concept_id)
                    for c in concepts]
        answers = asyncio.run(self.backend.complete_many(requests, desc="steering prompts"))
        return [answer.text.strip().strip('"') for answer in answers]


class PromptDetection(Method):
    name = "prompt-detection"
    config_class = PromptDetectionConfig
    detection_activation = "external"
    steering = "none"
    unit_norm = False

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringDictionary:
        return self.dictionary(target, concepts, layer, torch.zeros(len(concepts), target.hidden_size),
                               extra_config={"detector": "target-model", "template": RELEVANCE.name,
                                             "template_hash": RELEVANCE.version})

    def score_texts(self, backend: ChatBackend, concepts: Sequence[str], texts: Sequence[str]) -> list[float]:
        """The 0–2 relevance rating of each text for its concept (NaN where the answer has no rating)."""
        if len(concepts) != len(texts):
            raise ValueError(f"{len(concepts)} concepts but {len(texts)} texts; give one concept per text.")
        params = SamplingParams(temperature=self.config.temperature, max_tokens=self.config.max_tokens,
                                seed=self.config.seed)
        requests = [ChatRequest.user(RELEVANCE.render(concept=c, text=t), purpose="prompt_detection", params=params,
                                     template_hash=RELEVANCE.version, sample_index=i)
                    for i, (c, t) in enumerate(zip(concepts, texts))]
        answers = asyncio.run(backend.complete_many(requests, desc="prompt detection"))
        ratings = [parse_rating(answer.text) for answer in answers]
        failures = sum(math.isnan(r) for r in ratings)
        if failures:
            logger.warning("prompt-detection: %d of %d answers had no parsable rating (scored NaN)", failures,
                           len(ratings))
        return ratings


def parse_rating(text: str) -> float:
    """The score after the last "Rating:" (brackets, quotes, asterisks stripped), or NaN if absent or not 0–2.

    >>> parse_rating("The concept is clear. Rating: [[2]]")
    2.0
    >>> parse_rating("no idea")
    nan
    """
    matches = _RATING.findall(text)
    if not matches:
        return float("nan")
    value = matches[-1].strip().splitlines()[0] if matches[-1].strip() else ""
    value = value.strip("[]\"'* ").rstrip(".").strip("[]\"'* ")
    try:
        score = float(value)
    except ValueError:
        return float("nan")
    return score if 0.0 <= score <= 2.0 else float("nan")
