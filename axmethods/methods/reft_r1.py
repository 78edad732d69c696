"""ReFT-r1 (AxBench `lsreft.py: LsReFT` + `TopKReLUIntervention`, spec §3.6), the paper's method.

Per token a_i = ReLU(h_i·w); the sequence magnitude m is the mean of the top-k latents; training adds
m·w at every non-prefix position of prompt + response and minimises the response LM loss on positives
*and* negatives (so negatives learn a small m) plus a linearly ramped L1 on the non-top-k latents.
w stays unit-norm (gradient clipped, then its parallel component removed, before each step — AxBench's order —
renormalised after). The L1 term divides the non-top-k latents by all intervened positions, as AxBench.
Fixed AxBench bugs: fp32 master weights even for a bf16 model, gradient accumulation honoured, padding
never enters the top-k. All concepts of a chunk train jointly as one [k, d] parameter indexed per batch
row, on `ConceptTrainer` (`axmethods.methods.joint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from axmethods.interventions import RowSteering
from axmethods.methods.base import normalise_rows
from axmethods.methods.joint import TrainingSettings
from axmethods.methods.lm_training import LMRank1Method


@dataclass
class ReFTr1Config(TrainingSettings):
    concepts_per_chunk: int = field(default=8, metadata={"help": "Concepts trained jointly: a forward holds "
                                                                 "concepts_per_chunk × batch size rows."})
    per_device_train_batch_size: int = field(default=6, metadata={"help": "Examples per concept per micro-batch "
                                                                          "(paper: 6)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over each concept's 144 examples "
                                                                   "(paper: 3)."})
    learning_rate: float = field(default=1e-2, metadata={"help": "AdamW learning rate (paper: 1e-2 for 2B, 5e-3 "
                                                                 "for 9B)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Per-concept gradient clipping (paper: 1.0)."})
    topk: int = field(default=8, metadata={"help": "Latents averaged into the sequence magnitude (paper: 8)."})
    coeff_latent_l1_loss: float = field(default=0.005, metadata={"help": "L1 weight on non-top-k latents, "
                                                                         "ramped 0→1 over training (paper: 0.005)."})
    init_value: float = field(default=0.01, metadata={"help": "Constant initial value of w before normalising."})


class ReFTr1(LMRank1Method):
    name = "reft-r1"
    config_class = ReFTr1Config
    unit_norm = True

    def initial_weight(self, n_concepts: int, hidden_size: int) -> torch.Tensor:
        return normalise_rows(torch.full((n_concepts, hidden_size), self.config.init_value))

    def intervene(self, hidden: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[RowSteering, torch.Tensor]:
        return topk_relu_intervention(hidden, weight, mask, self.config.topk)


def topk_relu_intervention(hidden: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, topk: int
                           ) -> tuple[RowSteering, torch.Tensor]:
    """(the rows' addition of m·w, L1 of the non-top-k latents per row); m = mean top-k ReLU latent over the
    masked positions. Only m and the L1 are ReFT-r1's own: adding m·w is the registry's `addition`."""
    latents = torch.einsum("btd,bd->bt", hidden, weight).relu() * mask
    ranked = latents.masked_fill(~mask, float("-inf"))
    top_values, top_index = ranked.topk(min(topk, ranked.shape[1]), dim=1)
    top_valid = top_values > float("-inf")
    magnitude = top_values.where(top_valid, 0.0).sum(1) / top_valid.sum(1).clamp(min=1)
    in_top = torch.zeros_like(mask).scatter(1, top_index, top_valid)
    rest = mask & ~in_top
    # AxBench's L1: the non-top-k latents summed, divided by the number of intervened positions (all of them).
    l1 = (latents * rest).sum(1) / mask.sum(1).clamp(min=1)
    return RowSteering(weight, magnitude), l1
