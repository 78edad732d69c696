"""Training rank-1 interventions through the language-model loss (ReFT-r1, SSV), all concepts jointly.

Each batch row is one (concept, example) pair; a forward hook on block L adds that row's concept
intervention to the residual stream at every non-prefix position of prompt + response, and the loss is
the cross-entropy of the response tokens (the prompt is masked with −100). The parameter is one fp32
[k, d] matrix whatever the model's dtype: the hook computes in fp32 and casts only the added delta
down, so AdamW updates fp32 master weights (AxBench cast the intervention to bf16 — spec §9.10).
`LMRank1Model` is what `ConceptTrainer` trains: the frozen base model is held, not registered, so the
Trainer's checkpoints hold the [k, d] weight only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from axmethods.hooks import hook_output
from axmethods.methods.base import TrainingSet
from axmethods.models import TargetModel, pad_batch, pad_token_id

# (hidden [B, T, d] fp32, concept rows of the weight [B, d], intervened positions [B, T] bool)
#   → (delta [B, T, d] fp32, auxiliary loss per row [B] or None)
Intervene = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class EncodedExamples:
    """Token ids of prompt + response per row and where the response starts."""

    ids: list[list[int]]
    prompt_lengths: list[int]


def encode_lm(target: TargetModel, data: TrainingSet, max_length: int | None) -> EncodedExamples:
    """AxBench's LM view: chat-templated user turn + generation prompt, then the raw response (no EOS)."""
    ids, prompt_lengths = [], []
    for instruction, output in zip(data.instructions, data.outputs):
        prompt = target.encode(target.format_prompt(instruction))
        ids.append((prompt + target.encode(output))[:max_length])
        prompt_lengths.append(len(prompt))
    return EncodedExamples(ids, prompt_lengths)


class LMRank1Model(nn.Module):
    """A [k, d] fp32 intervention on block `layer` of the frozen target model, trained through the LM loss.

    The auxiliary loss (ReFT-r1's L1) is ramped in: coefficient × the fraction of training done.
    """

    def __init__(self, target: TargetModel, layer: int, weight: torch.Tensor, intervene: Intervene,
                 aux_coefficient: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.target = target  # not an nn.Module: the base model is neither trained nor checkpointed
        self.module = target.residual_module(layer)
        self.intervene = intervene
        self.aux_coefficient = aux_coefficient

    def forward(self, concept_index: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, intervened: torch.Tensor, progress: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.weight.shape[0]
        state: dict[str, torch.Tensor | None] = {}

        def apply(hidden: torch.Tensor, _call: object) -> torch.Tensor:
            delta, state["aux"] = self.intervene(hidden.float(), self.weight[concept_index], intervened)
            return hidden + delta.to(hidden.dtype)

        with hook_output(self.module, apply):
            logits = self.target.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                     reduction="none")
        per_concept = _per_concept_mean(token_loss.sum(1), (labels[:, 1:] != -100).sum(1), concept_index, n)
        loss = per_concept.sum()
        aux = state["aux"]
        if aux is not None:
            loss = loss + self.aux_coefficient * progress * _per_concept_mean(aux, torch.ones_like(aux),
                                                                              concept_index, n).sum()
        return loss, per_concept.detach().sum()


@dataclass
class LMCollator:
    """(concept, example) rows → right-padded ids, attention mask, labels (response only), intervened positions."""

    encoded: EncodedExamples
    prefix_length: int
    pad: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = [f["example"] for f in features]
        input_ids, attention_mask = pad_batch([self.encoded.ids[r] for r in rows], self.pad, side="right")
        position = torch.arange(input_ids.shape[1])[None]
        prompt = torch.tensor([self.encoded.prompt_lengths[r] for r in rows])
        labels = input_ids.masked_fill((position < prompt[:, None]) | (attention_mask == 0), -100)
        intervened = (position >= self.prefix_length) & (attention_mask == 1)
        return {"concept_index": torch.tensor([f["concept_index"] for f in features]), "input_ids": input_ids,
                "attention_mask": attention_mask, "labels": labels, "intervened": intervened}


def lm_collator(target: TargetModel, data: TrainingSet, max_length: int | None) -> LMCollator:
    return LMCollator(encode_lm(target, data, max_length), target.prefix_length, pad_token_id(target))


def _per_concept_mean(sums: torch.Tensor, counts: torch.Tensor, concept: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of each concept over its rows in the batch (0 for a concept without rows): Σ sums / Σ counts."""
    total = torch.zeros(n, device=sums.device).index_add(0, concept, sums.float())
    tokens = torch.zeros(n, device=sums.device).index_add(0, concept, counts.float())
    return total / tokens.clamp(min=1)
