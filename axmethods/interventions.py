"""Steering interventions on the residual stream of one layer, with a different (concept, magnitude) per row.

Every kind is one tensor function of the layer output `h [B, T, d]`, the rows' steering vectors `v [B, d]`
and magnitudes `α [B]` (`α = factor × calibration[concept]`), with `u = v / ‖v‖`:

| kind              | h ←                                   | AxBench name                                   |
|-------------------|---------------------------------------|------------------------------------------------|
| `addition`        | h + α·v                               | AdditionIntervention (the default)             |
| `clamp`           | h + (α − h·u)·u   (projection := α)   | SAE-style clamping of the concept's value      |
| `subtract_add`    | h − ReLU(h·u)·u + α·v                 | ReFT-r1 `clamping` (SubspaceIntervention)      |
| `threshold`       | h + α·v where h·v < α, else h         | ReFT-r1 `thresholding`                         |
| `ablate`          | h − (h·u)·u        (α unused)         | directional ablation                           |
| `ablate_positive` | h − ReLU(h·v + α)/‖v‖² · v            | RePS `null_it_out` (α: the concept's bias b)   |

`ablate` sets the projection on u to 0; `ablate_positive` caps h·v at −α (h·v ← min(h·v, −α)): with α = 0 it
removes ReLU(h·u)·u, the positive part of the projection. RePS's and HyperSteer's "subtract" rows are this kind,
with α = the concept's trained bias (RePS) or 0 (HyperSteer); its α is a threshold, like `threshold`'s.

Kinds are a registry (`INTERVENTIONS`: name → function); add one there to make it available everywhere.
Every place that adds, clamps, projects out or scales a direction goes through it — the steering hooks here,
the trainers' vector parameterisation (`trainers.parameterisations.VectorIntervention`), HyperSteer's training
hook, the LM-trained rank-1 methods (`methods.lm_training`), the compiled decoder's delta buffer and the
output score — so a row steered in training and the same row steered at inference give the same forward.
The same function runs as a plain forward hook (`steering_hooks`, `steer`, through `axmethods.hooks`) and as a
pyvene intervention (`axmethods.pyvene_bridge`) on `model.layers[L].output`; both touch every position
(prompt, chat tokens and generated tokens) unless `positions="after_prefix"` (hooks only: it reads the decoder
layer's `position_ids`, which generate and our sampler make padding-aware).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from axdata.errors import InputError
from axmethods.hooks import Call, hook_output

if TYPE_CHECKING:
    from axmethods.models import TargetModel

logger = logging.getLogger(__name__)


class SteeringSource(Protocol):
    """What steering reads from a dictionary (`axmethods.dictionary.SteeringDictionary` is one): named here so that
    this layer does not import the dictionary, which sits above it."""

    layer: int
    steering_vectors: torch.Tensor

    def rows(self, concept_ids: Sequence[int]) -> list[int]: ...
    def steering_magnitudes(self, concept_ids: Sequence[int], factors: Sequence[float]) -> torch.Tensor: ...
    def check_model(self, target: TargetModel) -> None: ...

InterventionKind = Literal["addition", "clamp", "subtract_add", "threshold", "ablate", "ablate_positive"]
# (h [B, T, d], v [B, 1, d], u = v/‖v‖, α [B, 1, 1]) → steered h, all fp32.
Intervention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _projection(h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (h * u).sum(-1, keepdim=True)


def _ablate_positive(h: torch.Tensor, v: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # RePS's own op order (an einsum over d, ‖v‖² clamped at 1e-12): its trained vectors' numbers stay what they
    # were (`_projection`'s sum of products rounds differently in the last bits).
    projection = torch.einsum("btd,bd->bt", h, v[:, 0]) + alpha[:, 0]
    removed = torch.relu(projection) / (v * v).sum(-1).clamp_min(1e-12)
    return h - removed[..., None] * v


INTERVENTIONS: dict[str, Intervention] = {
    "addition": lambda h, v, u, alpha: h + alpha * v,
    "clamp": lambda h, v, u, alpha: h + (alpha - _projection(h, u)) * u,
    "subtract_add": lambda h, v, u, alpha: h - torch.relu(_projection(h, u)) * u + alpha * v,
    "threshold": lambda h, v, u, alpha: torch.where((h * v).sum(-1, keepdim=True) < alpha, h + alpha * v, h),
    "ablate": lambda h, v, u, alpha: h - _projection(h, u) * u,
    "ablate_positive": _ablate_positive,
}
INTERVENTION_KINDS: tuple[str, ...] = tuple(INTERVENTIONS)
Positions = Literal["all", "after_prefix"]


class InterventionError(InputError):
    """An intervention does not fit the batch or the model it is applied to."""


@dataclass
class RowSteering:
    """Per-row steering of one batch: row b gets `kind` with vector `vectors[b]` and magnitude `magnitudes[b]`.

    Training builds it from parameter slices (gradients flow through `apply`); inference from dictionary rows.
    """

    vectors: torch.Tensor  # [B, d]
    magnitudes: torch.Tensor  # [B]
    kind: str = "addition"

    def __post_init__(self) -> None:
        if self.kind not in INTERVENTIONS:
            raise InterventionError(f"intervention kind {self.kind!r} is unknown; use one of {', '.join(INTERVENTIONS)}")
        if self.vectors.ndim != 2 or tuple(self.magnitudes.shape) != (self.vectors.shape[0],):
            raise InterventionError(f"vectors must be [B, d] and magnitudes [B]; got {tuple(self.vectors.shape)} and "
                                    f"{tuple(self.magnitudes.shape)}")

    @classmethod
    def from_dictionary(cls, dictionary: SteeringSource, concept_ids: Sequence[int], factors: Sequence[float],
                        kind: str = "addition") -> RowSteering:
        """Row b steers towards `concept_ids[b]` with α = `factors[b]` × that concept's calibration."""
        if len(concept_ids) != len(factors):
            raise InterventionError(f"{len(concept_ids)} concept_ids but {len(factors)} factors; give one factor per row")
        rows = dictionary.rows(concept_ids)
        return cls(dictionary.steering_vectors[rows], dictionary.steering_magnitudes(concept_ids, factors), kind)

    def apply(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden [B, T, d]` intervened on; positions where `mask [B, T]` is False are left as they were."""
        if hidden.shape[0] != self.vectors.shape[0]:
            raise InterventionError(
                f"the batch has {hidden.shape[0]} rows but the steering was built for {self.vectors.shape[0]}; build "
                "one RowSteering per batch (one concept and factor per row)."
            )
        # fp32 for the projections: bf16 dot products over d≈2k lose the small values clamping relies on.
        h = hidden.float()
        v = self.vectors.to(h.device)[:, None, :]
        alpha = self.magnitudes.to(h.device)[:, None, None]
        u = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        steered = INTERVENTIONS[self.kind](h, v, u, alpha)
        if mask is not None:
            steered = torch.where(mask[..., None].to(h.device), steered, h)
        return steered.to(hidden.dtype)


def steering_hooks(target: TargetModel, layer: int, steering: RowSteering, *,
                   positions: Positions = "all") -> AbstractContextManager[None]:
    """Apply `steering` to the output of decoder block `layer` for every forward inside the block.

    The hook is removed on exit, also when the body raises.
    """
    if positions not in ("all", "after_prefix"):
        raise InterventionError(f"positions {positions!r} is unknown; use 'all' or 'after_prefix'")
    prefix = target.prefix_length

    def steer_rows(hidden: torch.Tensor, call: Call) -> torch.Tensor:
        mask = None
        if positions == "after_prefix":
            position_ids = call.kwargs.get("position_ids")
            if position_ids is None:
                raise InterventionError(
                    f"positions='after_prefix' needs the position_ids that {type(call.module).__name__} receives; "
                    "this forward passed none. Pass padding-aware position_ids, or use positions='all'."
                )
            mask = (position_ids >= prefix).expand(hidden.shape[0], hidden.shape[1])
        return steering.apply(hidden, mask)

    return hook_output(target.residual_module(layer), steer_rows)


@contextmanager
def steer(target: TargetModel, dictionary: SteeringSource, concept_ids: Sequence[int], factors: Sequence[float],
          *, kind: str = "addition", positions: Positions = "all") -> Iterator[RowSteering]:
    """Steer row b of every batch run inside the block towards `concept_ids[b]` with `factors[b]`."""
    dictionary.check_model(target)
    steering = RowSteering.from_dictionary(dictionary, concept_ids, factors, kind)
    with steering_hooks(target, dictionary.layer, steering, positions=positions):
        yield steering
