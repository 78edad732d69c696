"""Linear probe "Probe" (AxBench `probe.py: LinearProbe`, spec §3.4): per-token logistic regression.

Every non-prefix token inherits its text's label; loss = mean token BCE(sigmoid(h·w), y), no bias,
optional L1 on w. AdamW with linear decay and no warmup; w is kept at unit norm with the parallel
gradient removed each step; w starts from nn.Linear's default init, as AxBench's. Fixed AxBench bug:
`gradient_accumulation_steps` is honoured (AxBench declared 4 but stepped every batch: 288 steps instead
of 72; `protocol: reference` restores that). Works on cached activations, all concepts of a chunk jointly.
Tokens after the chat prefix only, like every detector's read-out (AxBench's probe trained from position 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from axmethods.activations import TokenActivations
from axmethods.methods.base import ActivationMethod, TrainingSet, normalise_rows
from axmethods.methods.joint import TrainingSettings, train_chunk


@dataclass
class ProbeConfig(TrainingSettings):
    per_device_train_batch_size: int = field(default=12, metadata={"help": "Examples per concept per micro-batch "
                                                                           "(paper: 12)."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimiser step "
                                                                          "(paper config: 4; run.protocol=reference "
                                                                          "runs 1, as AxBench's code stepped)."})
    num_train_epochs: float = field(default=24.0, metadata={"help": "Passes over each concept's examples "
                                                                    "(paper: 24)."})
    learning_rate: float = field(default=5e-3, metadata={"help": "AdamW learning rate (paper: 5e-3 for 2B, 1e-3 "
                                                                 "for 9B)."})
    weight_decay: float = field(default=1e-3, metadata={"help": "AdamW weight decay (2B: 1e-3, 9B: 1e-4)."})
    l1_coefficient: float = field(default=0.0, metadata={"help": "L1 penalty on w (0 in production)."})


class Probe(ActivationMethod):
    name = "probe"
    config_class = ProbeConfig

    def __init__(self, config: ProbeConfig | None = None) -> None:
        super().__init__(config)
        self.loss_history: list[float] = []  # mean per-concept loss of every optimiser step

    def fit_chunk(self, activations: TokenActivations, data: TrainingSet, generator: torch.Generator
                  ) -> torch.Tensor:
        cfg = self.config
        d = activations.values.shape[1]
        # AxBench's probe starts from nn.Linear's default init, U(−1/√d, 1/√d), then unit norm; each concept's
        # from its own seed, so a concept starts the same whichever chunk it trains in.
        init = torch.stack([
            torch.rand(d, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + c.concept_id))
            for c in data.concepts]) * (2 * d ** -0.5) - d ** -0.5
        model = ProbeModel(normalise_rows(init).to(activations.values.device), activations, cfg.l1_coefficient)
        trainer = train_chunk(model, data, _collate, cfg, unit_norm=model.weight)
        self.loss_history += trainer.loss_history
        return model.weight.detach().float().cpu()


class ProbeModel(nn.Module):
    """Per-token logistic regression of k concepts on cached activations (not registered: not trained, not saved)."""

    def __init__(self, weight: torch.Tensor, activations: TokenActivations, l1_coefficient: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.activations = activations
        self.l1_coefficient = l1_coefficient

    def forward(self, concept_index: torch.Tensor, example: torch.Tensor, label: torch.Tensor, progress: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        picked = self.activations.select(example.cpu())
        device = self.weight.device
        token_pair = picked.text_index.to(device)
        token_concept = concept_index.to(device)[token_pair]
        logits = (picked.values.to(device).float() * self.weight[token_concept]).sum(-1)
        targets = label.to(device).float()[token_pair]
        token_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        per_concept = _segment_mean(token_loss, token_concept, self.weight.shape[0])
        return per_concept.sum() + self.l1_coefficient * self.weight.abs().sum(), per_concept.detach().sum()


def _collate(features: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor([f[key] for f in features]) for key in ("concept_index", "example", "label")}


def _segment_mean(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of `values` per segment id in [0, n); empty segments give 0."""
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, segment, values)
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, segment, torch.ones_like(values))
    return sums / counts.clamp(min=1)
