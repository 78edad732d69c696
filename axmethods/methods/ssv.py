"""Supervised steering vector "SSV" (AxBench `steering_vector.py: SteeringVector`, spec §3.5).

h ← h + w at every non-prefix position of prompt + response, LM loss on the positive responses only,
AdamW, no normalisation (w starts at 0.01 everywhere). Detection ReLU(h·w); steering adds the raw w
times α. Concepts of a chunk train jointly as one fp32 [k, d] parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from axmethods.interventions import RowSteering
from axmethods.methods.joint import TrainingSettings
from axmethods.methods.lm_training import LMRank1Method


@dataclass
class SSVConfig(TrainingSettings):
    concepts_per_chunk: int = field(default=8, metadata={"help": "Concepts trained jointly."})
    per_device_train_batch_size: int = field(default=6, metadata={"help": "Examples per concept per micro-batch "
                                                                          "(paper: 6)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over each concept's positives "
                                                                   "(paper: 3)."})
    learning_rate: float = field(default=1e-2, metadata={"help": "AdamW learning rate (paper: 1e-2)."})
    init_value: float = field(default=0.01, metadata={"help": "Constant initial value of every entry of w."})


class SSV(LMRank1Method):
    name = "ssv"
    config_class = SSVConfig
    positives_only = True

    def initial_weight(self, n_concepts: int, hidden_size: int) -> torch.Tensor:
        return torch.full((n_concepts, hidden_size), self.config.init_value)

    def intervene(self, hidden: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> tuple[RowSteering, None]:
        return RowSteering(weight, weight.new_ones(weight.shape[0])), None  # h + 1·w
