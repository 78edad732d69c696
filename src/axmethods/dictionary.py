"""The steering dictionary: one row per concept, the artefact every method produces.

`weight[i]` is concept `concepts[i]`'s direction in the residual stream read at `hook_module`
(the output of decoder block `layer`). Detection scores are `h @ weight.T (+ bias)`; steering adds
`factor * calibration[i] * weight[i]`. `calibration` is the per-concept maximum activation that
turns a unitless steering factor into a magnitude — stored with the dictionary, never silently 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from axdata.concepts import Concept
from axdata.hashing import content_hash


class DictionaryError(ValueError):
    """A dictionary is malformed or does not fit the model it is used with."""


@dataclass
class SteeringDictionary:
    weight: torch.Tensor
    concepts: list[Concept]
    layer: int
    hook_module: str
    base_model: str
    method: str
    base_model_revision: str | None = None
    bias: torch.Tensor | None = None
    calibration: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2:
            raise DictionaryError(f"weight must be [n_concepts, hidden_size], got shape {tuple(self.weight.shape)}")
        n = self.weight.shape[0]
        if len(self.concepts) != n:
            raise DictionaryError(f"{n} weight rows but {len(self.concepts)} concepts; they must match one to one")
        ids = [c.concept_id for c in self.concepts]
        if len(set(ids)) != len(ids):
            raise DictionaryError("concept_ids must be unique within a dictionary")
        for name in ("bias", "calibration"):
            vector = getattr(self, name)
            if vector is not None and tuple(vector.shape) != (n,):
                raise DictionaryError(f"{name} must have shape ({n},), got {tuple(vector.shape)}")
        self.weight = self.weight.detach().float().contiguous()
        if self.bias is not None:
            self.bias = self.bias.detach().float().contiguous()
        if self.calibration is not None:
            self.calibration = self.calibration.detach().float().contiguous()

    @property
    def n_concepts(self) -> int:
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    @property
    def concept_ids(self) -> list[int]:
        return [c.concept_id for c in self.concepts]

    @property
    def config_hash(self) -> str:
        return content_hash({"method": self.method, "config": self.config})

    def rows(self, concept_ids: Sequence[int]) -> torch.Tensor:
        """Row indices of `concept_ids` (a LongTensor), or an error naming the unknown ids."""
        index = {cid: i for i, cid in enumerate(self.concept_ids)}
        missing = [cid for cid in concept_ids if cid not in index]
        if missing:
            raise DictionaryError(f"concept_ids {missing[:10]} are not in this {self.method} dictionary")
        return torch.tensor([index[cid] for cid in concept_ids], dtype=torch.long)

    def steering_magnitudes(self, concept_ids: Sequence[int], factors: Sequence[float]) -> torch.Tensor:
        """`factor × calibration` per row; refuses an uncalibrated dictionary instead of assuming 1.0."""
        if self.calibration is None:
            raise DictionaryError(
                f"The {self.method} dictionary has no calibration (per-concept max activation). Run latent "
                "inference first (`axbench infer latent`) or calibrate it explicitly."
            )
        rows = self.rows(concept_ids)
        return torch.as_tensor(factors, dtype=torch.float32) * self.calibration[rows]
