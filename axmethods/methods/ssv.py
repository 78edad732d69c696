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
from axmethods.methods.base import Method, TrainingSet
from axmethods.methods.joint import TrainingSettings, train_chunk
from axmethods.methods.lm_training import LMRank1Model, lm_collator
from axmethods.models import TargetModel


@dataclass
class SSVConfig(TrainingSettings):
    concepts_per_chunk: int = field(default=8, metadata={"help": "Concepts trained jointly."})
    per_device_train_batch_size: int = field(default=6, metadata={"help": "Examples per concept per micro-batch "
                                                                          "(paper: 6)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over each concept's positives "
                                                                   "(paper: 3)."})
    learning_rate: float = field(default=1e-2, metadata={"help": "AdamW learning rate (paper: 1e-2)."})
    init_value: float = field(default=0.01, metadata={"help": "Constant initial value of every entry of w."})


class SSV(Method):
    name = "ssv"
    config_class = SSVConfig
    detection_activation = "relu"

    def __init__(self, config: SSVConfig | None = None) -> None:
        super().__init__(config)
        self.loss_history: list[float] = []

    def fit(self, target: TargetModel, train_df: pd.DataFrame, concepts: Sequence[Concept],
            layer: int) -> SteeringDictionary:
        cfg = self.config
        layer = target.validate_layer(layer)
        rows = []
        for chunk in TrainingSet.from_frame(train_df, concepts, positives_only=True).chunks(cfg.concepts_per_chunk):
            weight = torch.full((chunk.n_concepts, target.hidden_size), cfg.init_value, device=target.device)
            model = LMRank1Model(target, layer, weight, _add)
            trainer = train_chunk(model, chunk, lm_collator(target, chunk, cfg.max_length), cfg, frozen=target.model)
            self.loss_history += trainer.loss_history
            rows.append(model.weight.detach().float().cpu())
        return self.dictionary(target, concepts, layer, torch.cat(rows))


def _add(hidden: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, None]:
    return weight[:, None, :] * mask[..., None], None
