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

from axmethods.activations import TokenActivations
from axmethods.methods.base import ActivationMethod, MethodConfig, TrainingSet, normalise_rows
from axmethods.methods.joint import (
    concept_batches,
    linear_decay,
    normalise_,
    optimizer_steps,
    remove_parallel_gradient,
)


@dataclass
class ProbeConfig(MethodConfig):
    batch_size: int = field(default=12, metadata={"help": "Examples per concept per micro-batch (paper: 12)."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimiser step "
                                                                          "(paper config: 4)."})
    epochs: int = field(default=24, metadata={"help": "Passes over each concept's examples (paper: 24)."})
    lr: float = field(default=5e-3, metadata={"help": "AdamW learning rate (paper: 5e-3 for 2B, 1e-3 for 9B)."})
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
        values = activations.values
        # AxBench's probe starts from nn.Linear's default init, U(−1/√d, 1/√d), then unit norm; each concept's
        # from its own seed, so a concept starts the same whichever chunk it trains in.
        bound = values.shape[1] ** -0.5
        init = torch.stack([
            torch.rand(values.shape[1], generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + c.concept_id))
            for c in data.concepts]) * (2 * bound) - bound
        weight = torch.nn.Parameter(normalise_rows(init).to(values.device))
        optimizer = torch.optim.AdamW([weight], lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = optimizer_steps(data.members, cfg.batch_size, cfg.epochs, cfg.gradient_accumulation_steps)
        scheduler = linear_decay(optimizer, total)
        label_of = torch.zeros(data.n_concepts, len(data.instructions))
        rows = torch.arange(data.n_concepts)[:, None].expand_as(data.members)
        valid = data.members >= 0
        label_of[rows[valid], data.members[valid]] = data.labels[valid]

        micro_total = optimizer_steps(data.members, cfg.batch_size, cfg.epochs, 1)
        running = 0.0
        for micro, batch in enumerate(concept_batches(data.members, cfg.batch_size, cfg.epochs, generator), 1):
            concept, text = (batch >= 0).nonzero(as_tuple=True)
            texts = batch[concept, text]
            picked = activations.select(texts)
            token_pair = picked.text_index
            token_concept = concept.to(values.device)[token_pair]
            logits = (picked.values.float() * weight[token_concept]).sum(-1)
            targets = label_of[concept, texts].to(values.device)[token_pair]
            token_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            per_concept = _segment_mean(token_loss, token_concept, data.n_concepts)
            loss = per_concept.sum() + cfg.l1_coefficient * weight.abs().sum()
            (loss / cfg.gradient_accumulation_steps).backward()
            running += float(per_concept.detach().sum()) / data.n_concepts / cfg.gradient_accumulation_steps
            if micro % cfg.gradient_accumulation_steps == 0 or micro == micro_total:
                remove_parallel_gradient(weight)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                normalise_(weight)
                self.loss_history.append(running)
                running = 0.0
        return weight.detach().float().cpu()


def _segment_mean(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of `values` per segment id in [0, n); empty segments give 0."""
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, segment, values)
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, segment, torch.ones_like(values))
    return sums / counts.clamp(min=1)
