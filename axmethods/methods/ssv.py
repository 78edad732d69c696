"""Supervised steering vector "SSV" (AxBench `steering_vector.py: SteeringVector`, spec §3.5).

h ← h + w at every non-prefix position of prompt + response, LM loss on the positive responses only,
AdamW, no normalisation (w starts at 0.01 everywhere). Detection ReLU(h·w); steering adds the raw w
times α. Concepts of a chunk train jointly as one fp32 [k, d] parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from axdata.concepts import Concept
from axmethods.dictionary import SteeringDictionary
from axmethods.methods.base import Method, MethodConfig, TrainingSet
from axmethods.methods.lm_training import LMSchedule, train_lm_rank1
from axmethods.models import TargetModel


@dataclass
class SSVConfig(MethodConfig):
    concepts_per_chunk: int = field(default=8, metadata={"help": "Concepts trained jointly."})
    batch_size: int = field(default=6, metadata={"help": "Examples per concept per micro-batch (paper: 6)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    epochs: int = field(default=3, metadata={"help": "Passes over each concept's positives (paper: 3)."})
    lr: float = field(default=1e-2, metadata={"help": "AdamW learning rate (paper: 1e-2)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Per-concept gradient clipping; 0 = none."})
    init_value: float = field(default=0.01, metadata={"help": "Constant initial value of every entry of w."})


class SSV(Method):
    name = "ssv"
    config_class = SSVConfig
    detection_activation = "relu"
    unit_norm = False

    def __init__(self, config: SSVConfig | None = None) -> None:
        super().__init__(config)
        self.loss_history: list[float] = []

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringDictionary:
        cfg = self.config
        layer = target.validate_layer(layer)
        data = TrainingSet.from_frame(train_df, concepts, positives_only=True)
        generator = torch.Generator().manual_seed(cfg.seed)
        schedule = LMSchedule(cfg.batch_size, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.gradient_accumulation_steps,
                              cfg.max_grad_norm, unit_norm=False, aux_coefficient=0.0, max_length=cfg.max_length)
        rows = []
        for index, chunk in enumerate(data.chunks(cfg.concepts_per_chunk)):
            weight = torch.nn.Parameter(torch.full((chunk.n_concepts, target.hidden_size), cfg.init_value,
                                                   device=target.device))
            rows.append(train_lm_rank1(target, layer, chunk, weight, _add, schedule, generator, self.loss_history,
                                       desc=f"SSV chunk {index + 1}"))
        return self.dictionary(target, concepts, layer, torch.cat(rows))


def _add(hidden: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
    return weight[:, None, :] * mask[..., None], None
