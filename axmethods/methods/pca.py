"""PCA (AxBench `mean.py: PCA`, spec §3.2): first principal component of the positive tokens.

Mean-centred like sklearn's PCA, unit norm, and oriented as sklearn orients `PCA(...).components_[0]` (AxBench's
read-out): `svd_flip` makes the entry of largest magnitude positive. A raw eigenvector's sign is arbitrary and
agreed with sklearn's in about half of random datasets; the sign flips a concept's AUROC (x → 1 − x) and its
steering direction, so it has to be the reference's.
Concepts are batched: their token matrices are gathered into a padded [k, T, d] tensor, and the
covariances [k, d, d] go through one batched `eigh`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from axmethods.activations import TokenActivations
from axmethods.methods.base import ActivationMethod, MethodConfig, TrainingSet, normalise_rows


@dataclass
class PCAConfig(MethodConfig):
    covariance_batch: int = field(default=8, metadata={"help": "Concepts whose d×d covariances are "
                                                               "eigendecomposed at once (memory: k·d² floats)."})


class PCA(ActivationMethod):
    name = "pca"
    config_class = PCAConfig

    def fit_chunk(self, activations: TokenActivations, data: TrainingSet, generator: torch.Generator
                  ) -> torch.Tensor:
        index = concept_token_index(activations, data.membership(1.0))
        return batched(index, self.config.covariance_batch,
                       lambda part: first_component(activations.values[part.clamp(min=0)].float(), part >= 0))


def concept_token_index(activations: TokenActivations, mask: torch.Tensor) -> torch.Tensor:
    """[concepts, max_tokens] token-row indices of each concept's texts in `mask` [concepts, texts]; −1 pads."""
    tokens = mask[:, activations.text_index.cpu()] > 0
    positions = tokens.long().cumsum(1) - 1
    index = torch.full((mask.shape[0], max(int(tokens.sum(1).max()), 1)), -1, dtype=torch.long)
    concept, token = tokens.nonzero(as_tuple=True)
    index[concept, positions[concept, token]] = token
    return index


def first_component(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Unit top eigenvector of the centred covariance of each batch's valid rows: x [k, T, d], valid [k, T]."""
    weights = valid.float()[..., None]
    count = weights.sum(1).clamp(min=1)
    mean = (x * weights).sum(1) / count
    centred = (x - mean[:, None]) * weights
    covariance = centred.transpose(1, 2) @ centred / count[..., None]
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues: the last column is the top PC
    return sklearn_sign(normalise_rows(vectors[..., -1]))


def sklearn_sign(components: torch.Tensor) -> torch.Tensor:
    """Rows [k, d] flipped so that each row's largest-magnitude entry is positive (sklearn's `svd_flip` with
    `u_based_decision=False`, which its PCA applies to `components_`; the first such entry on ties)."""
    largest = components.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(components.gather(-1, largest))
    return components * torch.where(signs == 0, torch.ones_like(signs), signs)


def batched(index: torch.Tensor, size: int, fn) -> torch.Tensor:
    """`fn` applied to row blocks of `index` (bounded memory), concatenated."""
    return torch.cat([fn(index[start:start + size]) for start in range(0, index.shape[0], size)])
