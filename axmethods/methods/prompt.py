"""Prompt baselines (AxBench `prompt.py`, spec §3.11): steering and detection without any vector.

- PromptSteering → `SteeringPrompts`: one LLM call per concept writes an instruction that makes a model bring
  the concept up; steering inference prepends it to the user turn (`"<instruction>\\n\\nQuestion: <prompt>"`)
  and ignores the factor. The instruction is stored per concept (`prompts`).
- PromptDetection → `RelevanceRater`: the target model itself rates how relevant a text is to the concept (0–2,
  the judge's concept-relevance contract, "Rating: [[score]]"); detection-only, nothing to train. Unparsable
  answers are NaN and counted, never silently 0 or −1.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from axdata.concepts import Concept
from axdata.generation.templates import FALLBACK_STEERING_PROMPT, STEERING_PROMPT, PromptTemplate
from axdata.llm.types import ChatBackend, ChatRequest, SamplingParams
from axmethods.contract import DictionaryError, FolderResult
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


@dataclass
class SteeringPrompts(FolderResult):
    """Each concept's steering instruction (prompt steering's result): steers by prompting, detects nothing."""

    FORMAT: ClassVar[str] = "axbench-steering-prompts"
    KIND: ClassVar[str] = "steering prompts"
    steers: ClassVar[bool] = True

    prompts: dict[int, str]  # concept_id → instruction
    concepts: list[Concept]
    method: str
    base_model: str
    layer: int
    template: str
    template_hash: str
    llm: str | None = None  # the LLM that wrote the instructions (None: AxBench's fixed fallback sentence)
    base_model_revision: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prompts = {int(cid): text for cid, text in self.prompts.items()}
        missing = [c.concept_id for c in self.concepts if not self.prompts.get(c.concept_id)]
        if missing:
            raise DictionaryError(f"the {self.method} steering prompts have no instruction for concepts "
                                  f"{missing[:10]}; refit them on the same dataset config.")

    def steerer(self, *, kind: str = "addition", positions: str = "all") -> PromptSteerer:
        return PromptSteerer(self)

    def record(self) -> dict[str, Any]:
        return {"layer": self.layer, "prompts": {str(k): v for k, v in self.prompts.items()},
                "template": self.template, "template_hash": self.template_hash, "llm": self.llm}

    @classmethod
    def from_record(cls, record: dict[str, Any], concepts: list[Concept],
                    tensors: dict[str, torch.Tensor]) -> SteeringPrompts:
        return cls(prompts=record["prompts"], concepts=concepts, method=record["method"],
                   base_model=record["base_model"], layer=record["layer"], template=record["template"],
                   template_hash=record["template_hash"], llm=record.get("llm"),
                   base_model_revision=record.get("base_model_revision"), config=record.get("config", {}))


@dataclass
class PromptSteerer:
    """Prompt steering: the concept's LLM-written instruction prepended to the user turn; no hooks, no factor."""

    prompts: SteeringPrompts
    factor_free: bool = True

    @property
    def method(self) -> str:
        return self.prompts.method

    def provenance(self) -> dict[str, Any]:
        return {"dictionary_config_hash": self.prompts.config_hash, "template_hash": self.prompts.template_hash}

    def instructions(self, prompts: pd.DataFrame) -> list[str]:
        by_concept = self.prompts.prompts
        missing = sorted({int(cid) for cid in prompts["concept_id"] if not by_concept.get(int(cid))})
        if missing:
            raise DictionaryError(f"the {self.method} steering prompts have no instruction for concepts "
                                  f"{missing[:10]}; refit them on the same dataset config.")
        return [f"{by_concept[int(cid)]}\n\nQuestion: {prompt}"
                for cid, prompt in zip(prompts["concept_id"], prompts["original_prompt"])]

    def intervene(self, target: TargetModel, rows: pd.DataFrame) -> tuple[AbstractContextManager[Any], np.ndarray]:
        return nullcontext(), np.full(len(rows), np.nan)


@dataclass
class RelevanceRater(FolderResult):
    """Prompt detection's result: the concepts and the settings with which the target model rates texts."""

    FORMAT: ClassVar[str] = "axbench-relevance-rater"
    KIND: ClassVar[str] = "relevance rater"
    detector: ClassVar[str] = "target-model"

    concepts: list[Concept]
    method: str
    base_model: str
    layer: int
    settings: PromptDetectionConfig
    base_model_revision: str | None = None

    @property
    def config(self) -> dict[str, Any]:
        return {**asdict(self.settings), "template": RELEVANCE.name, "template_hash": RELEVANCE.version}

    def score_texts(self, backend: ChatBackend, concepts: Sequence[str], texts: Sequence[str]) -> list[float]:
        """The 0–2 relevance rating of each text for its concept (NaN where the answer has no rating)."""
        return PromptDetection(self.settings).score_texts(backend, concepts, texts)

    def record(self) -> dict[str, Any]:
        return {"layer": self.layer}

    @classmethod
    def from_record(cls, record: dict[str, Any], concepts: list[Concept],
                    tensors: dict[str, torch.Tensor]) -> RelevanceRater:
        settings = {k: v for k, v in record.get("config", {}).items() if k not in ("template", "template_hash")}
        return cls(concepts=concepts, method=record["method"], base_model=record["base_model"],
                   layer=record["layer"], settings=PromptDetectionConfig(**settings),
                   base_model_revision=record.get("base_model_revision"))


class PromptSteering(Method):
    name = "prompt-steering"
    config_class = PromptSteeringConfig

    def __init__(self, config: PromptSteeringConfig | None = None, backend: ChatBackend | None = None) -> None:
        super().__init__(config)
        self.backend = backend

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringPrompts:
        prompts = self.steering_prompts(concepts)
        template = STEERING_PROMPT if self.config.llm_prompts else FALLBACK_STEERING_PROMPT
        return SteeringPrompts(
            prompts={c.concept_id: p for c, p in zip(concepts, prompts)}, concepts=list(concepts), method=self.name,
            base_model=target.model_id, layer=layer, template=template.name, template_hash=template.version,
            llm=self.backend.model_name if self.backend is not None and self.config.llm_prompts else None,
            base_model_revision=target.revision, config=asdict(self.config))

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

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> RelevanceRater:
        return RelevanceRater(concepts=list(concepts), method=self.name, base_model=target.model_id, layer=layer,
                              settings=self.config, base_model_revision=target.revision)

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
