"""DiffMean (AxBench `mean.py: DiffMean`, spec §3.1): mean positive token minus mean negative token.

Token-weighted means (every non-prefix token counts once, not every sequence), unit-normalised;
detection is the raw dot product. Only per-text token sums are needed, so training holds those, never a
chunk's token activations (`needs_tokens = False`). All concepts of a chunk are one pair of matmuls: per-text token
sums [rows, d] weighted by the concepts' membership masks [concepts, rows].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from axmethods.activations import TextSums, TokenActivations
from axmethods.methods.base import ActivationMethod, MethodConfig, TrainingSet, normalise_rows


@dataclass
class DiffMeanConfig(MethodConfig):
    """DiffMean has no hyper-parameters beyond the shared activation settings."""


class DiffMean(ActivationMethod):
    name = "diffmean"
    config_class = DiffMeanConfig
    needs_tokens = False

    def fit_chunk(self, activations: TokenActivations | TextSums, data: TrainingSet, generator: torch.Generator
                  ) -> torch.Tensor:
        return diffmean_directions(activations, data.membership(1.0), data.membership(0.0))


def diffmean_directions(activations: TokenActivations | TextSums, positive: torch.Tensor, negative: torch.Tensor
                        ) -> torch.Tensor:
    """Unit rows of (token mean over `positive` texts − token mean over `negative` texts), per concept.

    `positive` / `negative`: [concepts, texts] 0/1 masks over the texts of `activations`.
    """
    sums = activations.segment_sum()
    counts = activations.lengths.float().to(sums.device)
    # Each concept uses ~144 of the rows: sparse masks skip the zeros of a [concepts, rows] dense product.
    positive, negative = positive.to(sums.device).to_sparse(), negative.to(sums.device).to_sparse()
    mean_pos = torch.sparse.mm(positive, sums) / torch.sparse.mm(positive, counts[:, None]).clamp(min=1)
    mean_neg = torch.sparse.mm(negative, sums) / torch.sparse.mm(negative, counts[:, None]).clamp(min=1)
    return normalise_rows(mean_pos - mean_neg)
