"""LAT (AxBench `mean.py: LAT`, spec §3.3): first PC of normalised differences of random token pairs.

Per concept: shuffle its positive tokens, pair the first half with the second half, normalise each
difference to unit norm, take the first principal component (centred, as sklearn does), unit norm,
oriented as sklearn's `components_[0]` (see `pca.sklearn_sign`). The shuffles of all concepts are one argsort of random keys (padding sorts last).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from axmethods.activations import TokenActivations
from axmethods.methods.base import ActivationMethod, MethodConfig, TrainingSet, normalise_rows
from axmethods.methods.pca import batched, concept_token_index, first_component


@dataclass
class LATConfig(MethodConfig):
    covariance_batch: int = field(default=8, metadata={"help": "Concepts eigendecomposed at once."})


class LAT(ActivationMethod):
    name = "lat"
    config_class = LATConfig

    def fit_chunk(self, activations: TokenActivations, data: TrainingSet, generator: torch.Generator
                  ) -> torch.Tensor:
        pairs = shuffled_pairs(concept_token_index(activations, data.membership(1.0)), generator)

        def component(part: torch.Tensor) -> torch.Tensor:
            first, second, valid = part[..., 0], part[..., 1], part[..., 0] >= 0
            values = activations.values
            diff = values[first.clamp(min=0)].float() - values[second.clamp(min=0)].float()
            return first_component(normalise_rows(diff), valid)

        return batched(pairs, self.config.covariance_batch, component)


def shuffled_pairs(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[concepts, n_pairs, 2] token pairs (i-th of the shuffled first half, i-th of the second); −1 pads."""
    valid = index >= 0
    keys = torch.rand(index.shape, generator=generator).masked_fill(~valid, float("inf"))
    shuffled = index.gather(1, keys.argsort(1))
    half = valid.sum(1) // 2
    width = max(int(half.max()), 1)
    step = torch.arange(width)[None]
    in_range = step < half[:, None]
    first = shuffled[:, :width].masked_fill(~in_range, -1)
    second = shuffled.gather(1, (step + half[:, None]).clamp(max=index.shape[1] - 1)).masked_fill(~in_range, -1)
    return torch.stack([first, second], dim=-1)
