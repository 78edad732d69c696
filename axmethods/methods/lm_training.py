"""Training rank-1 interventions through the language-model loss (ReFT-r1, SSV), all concepts jointly.

Each batch row is one (concept, example) pair; a forward hook on block L applies that row's concept
intervention to the residual stream at every non-prefix position of prompt + response, and the loss is
the cross-entropy of the response tokens (the prompt is masked with −100). A method's `intervene` gives
only what is its own (the rows' magnitudes, e.g. ReFT-r1's top-k latent, and an auxiliary loss) as a
`RowSteering` over the weight's rows: the direction arithmetic is the interventions registry's, the same
as steering with the trained dictionary. The parameter is one fp32 [k, d] matrix whatever the model's
dtype: `RowSteering.apply` computes in fp32 and casts the result down, so AdamW updates fp32 master
weights (AxBench cast the intervention to bf16 — spec §9.10).
`LMRank1Model` is what `ConceptTrainer` trains, with `module_objective` (its forward is the LM objective): the
frozen base model is held, not registered, so the Trainer's checkpoints hold the [k, d] weight only.
Its batch layout (`LMCollator`) is AxBench's LsReFT / SteeringVector one, kept apart from the RePS family's
`SequenceBatch` on purpose: see `LMCollator` and docs/architecture.md, "Training".
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from axdata.concepts import Concept
from axmethods.dictionary import SteeringDictionary
from axmethods.hooks import hook_output
from axmethods.interventions import RowSteering
from axmethods.methods.base import Method, TrainingSet
from axmethods.methods.joint import train_chunk
from axmethods.models import TargetModel, pad_batch, pad_token_id

# (hidden [B, T, d] fp32, concept rows of the weight [B, d], intervened positions [B, T] bool)
#   → (the rows' steering, applied at the intervened positions; auxiliary loss per row [B] or None)
Intervene = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[RowSteering, torch.Tensor | None]]


@dataclass
class EncodedExamples:
    """Token ids of prompt + response per row and where the response starts."""

    ids: list[list[int]]
    prompt_lengths: list[int]


def encode_lm(target: TargetModel, data: TrainingSet, max_length: int | None) -> EncodedExamples:
    """AxBench's LM view (`TargetModel.encode_turn`), prompt + response truncated together to `max_length`."""
    ids, prompt_lengths = [], []
    for instruction, output in zip(data.instructions, data.outputs):
        prompt, response = target.encode_turn(instruction, output)
        ids.append((prompt + response)[:max_length])
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
            steering, state["aux"] = self.intervene(hidden.float(), self.weight[concept_index], intervened)
            return steering.apply(hidden, intervened)

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
    """(concept, example) rows → right-padded ids, attention mask, labels (response only), intervened positions.

    The same facts as the RePS family's `SequenceBatch` (prompt + response ids, response-only loss, intervened
    positions, concept index), packed as AxBench's LsReFT / SteeringVector pack them: prompt + response truncated
    together to `max_length`, right-padded as one sequence, the loss the token cross-entropy over all logits.
    `SequenceBatch` left-pads prompts so responses share columns (logits for those only, per-sequence
    log-likelihoods for preference losses) and truncates prompt and response apart. Moving ReFT-r1 / SSV onto it
    would change their padding, truncation and loss arithmetic, so their trained weights would no longer be
    bitwise those of the reference-parity protocol; the two packings stay, the tokenisation
    (`TargetModel.encode_turn`) is one.
    """

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


class LMRank1Method(Method):
    """A rank-1 method trained through the LM loss (ReFT-r1, SSV): each chunk of concepts is one `LMRank1Model`
    trained on `ConceptTrainer`; subclasses give the initial weight and the intervention."""

    detection_activation = "relu"
    positives_only: ClassVar[bool] = False  # train on the positives only (SSV) or with the negatives (ReFT-r1)
    unit_norm: ClassVar[bool] = False  # keep each row at unit norm (gradient's parallel part removed)

    def __init__(self, config: object | None = None) -> None:
        super().__init__(config)
        self.loss_history: list[float] = []  # mean per-concept loss of every optimiser step (ObjectiveTrainer's)

    @abstractmethod
    def initial_weight(self, n_concepts: int, hidden_size: int) -> torch.Tensor:
        """The [n_concepts, hidden_size] starting rows."""

    @abstractmethod
    def intervene(self, hidden: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[RowSteering, torch.Tensor | None]:
        """(the rows' steering by `weight` [B, d], applied to `hidden` at the `mask`ed positions, an auxiliary loss
        per row or None)."""

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringDictionary:
        cfg = self.config
        layer = target.validate_layer(layer)
        rows = []
        data = TrainingSet.from_frame(train_df, concepts, positives_only=self.positives_only)
        for chunk in data.chunks(cfg.concepts_per_chunk):
            weight = self.initial_weight(chunk.n_concepts, target.hidden_size).to(target.device)
            model = LMRank1Model(target, layer, weight, self.intervene, getattr(cfg, "coeff_latent_l1_loss", 0.0))
            trainer = train_chunk(model, chunk, lm_collator(target, chunk, cfg.max_length), cfg,
                                  unit_norm=model.weight if self.unit_norm else None, frozen=target.model)
            self.loss_history += trainer.loss_history
            rows.append(model.weight.detach().float().cpu())
        return self.dictionary(target, concepts, layer, torch.cat(rows))
