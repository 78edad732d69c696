"""The one training shape: `ObjectiveTrainer` (a transformers `Trainer` with a pluggable objective) and
`ConceptTrainer`, its subclass for k concepts trained at once.

Every gradient-trained method of the registry trains on a subclass of `ObjectiveTrainer` (TRL's `SFTTrainer`
aside: full fine-tuning and LoRA-SFT, where TRL is the right tool; docs/architecture.md, "Training"):

    ObjectiveTrainer(Trainer)     compute_loss = the objective; loss_history; frozen base model; summary
    ├── ConceptTrainer            + a leading concept axis: per-concept batches and clipping, unit-norm rows;
    │   │                           Probe, ReFT-r1, SSV train on it with `module_objective`
    │   └── RePSTrainer           RePS / BiPO / Lang. (vector, LoRA, LoReFT): `PreferenceObjective`
    └── HyperSteerTrainer         one shared network, no concept axis: `HyperSteerObjective`

An objective is `objective(trainer, model, inputs) -> (loss to minimise, the micro-batch's loss to record)`.
`module_objective` lets the trained module compute its own loss in its forward (the probe's BCE, the LM loss of
ReFT-r1 / SSV): that forward runs through the Trainer's (possibly DDP-wrapped) model.

Every concept-axis method (Probe, ReFT-r1, SSV, the RePS family) keeps all concepts of a run in parameters with
a leading concept axis. Three things make such a run equal to k single-concept runs:
- `ConceptBatchSampler`: each micro-batch holds `per_device_train_batch_size` examples of *every* concept;
- the objective's loss is the sum over concepts of each concept's mean loss;
- the optimiser's step pre-hook clips each concept's gradient on its own (`max_grad_norm` is per concept)
  and, for unit-norm directions, removes each row's gradient component along the row; a post-hook puts the
  rows back on the unit sphere. AdamW is row-local, so no concept's update depends on another's.
Everything else (AdamW, linear decay, gradient accumulation, mixed precision, checkpoints,
`resume_from_checkpoint`, `accelerate launch`) is the Trainer's own. Checkpoints hold the trained parameters
only: the module a subclass trains registers its frozen base model nowhere (see `SteeringModel`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer

from axdata.errors import InputError
from axmethods.distributed import world_size
from axmethods.models import frozen as frozen_model


def refuse_distributed(methods: str) -> None:
    """Refuse, before any work, to train `methods` under a distributed launcher: their objectives call the base
    model and the intervention directly, not through the DDP-wrapped module's forward, so DDP can neither find
    their attributes nor synchronise their gradients (seen: `torchrun … axbench train reps` ended in
    "'DistributedDataParallel' object has no attribute 'base'"). Routing them through the forward, as
    `module_objective` does, lifts this."""
    if world_size() > 1:
        raise InputError(f"{methods} cannot train under a distributed launcher yet (their objective bypasses the "
                         "DDP-wrapped model); train them in one process — without torchrun / accelerate launch — "
                         "then run latent and steering inference under the launcher as usual.")


class ConceptBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Each micro-batch holds `per_concept` rows of every concept (reshuffled each epoch, seeded by seed + epoch).

    A concept with fewer rows than the widest one simply has none in the last steps of an epoch.
    """

    def __init__(self, concept_of_row: Sequence[int], per_concept: int, seed: int) -> None:
        by_concept: dict[int, list[int]] = {}
        for row, concept in enumerate(concept_of_row):
            by_concept.setdefault(int(concept), []).append(row)
        self.groups = [torch.tensor(rows) for _, rows in sorted(by_concept.items())]
        self.per_concept = per_concept
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(max(len(g) for g in self.groups) / self.per_concept)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        shuffled = [g[torch.randperm(len(g), generator=generator)] for g in self.groups]
        for step in range(len(self)):
            yield [int(r) for g in shuffled for r in g[step * self.per_concept:(step + 1) * self.per_concept]]


@torch.no_grad()
def clip_per_concept_(parameters: Sequence[nn.Parameter], n_concepts: int, max_norm: float) -> None:
    """Scale each concept's gradient (over all `parameters`, concept-major leading axis) to norm ≤ `max_norm`."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    norms = torch.stack([g.reshape(n_concepts, -1).float().pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for grad in grads:  # a leading axis of k × (layers) rows
        grad.mul_(scale.repeat_interleave(grad.shape[0] // n_concepts).to(grad.dtype).view(-1, *[1] * (grad.ndim - 1)))


@torch.no_grad()
def remove_parallel_gradient(weight: nn.Parameter) -> None:
    """Drop each row's gradient component along the row (Gao et al. 2024): steps stay on the unit sphere."""
    if weight.grad is None:
        return
    unit = weight / weight.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    weight.grad -= (weight.grad * unit).sum(-1, keepdim=True) * unit


@torch.no_grad()
def normalise_(weight: nn.Parameter) -> None:
    weight /= weight.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def prepare_gradient_(weight: nn.Parameter, max_norm: float, unit_norm: bool) -> None:
    """Before an optimiser step, AxBench's order: clip each row's gradient, then (unit-norm methods) remove its
    component parallel to the row. The other order would let the clipped gradient reach `max_norm` in full."""
    clip_per_concept_([weight], weight.shape[0], max_norm)
    if unit_norm:
        remove_parallel_gradient(weight)


class Objective(Protocol):
    """A training objective: `(loss to minimise, the micro-batch's loss as `loss_history` records it)`.

    The recorded value is the objective's own loss without regularisers (the probe's and ReFT-r1's L1 terms):
    for a concept-axis trainer, the mean over concepts of each concept's mean loss.
    """

    def __call__(self, trainer: ObjectiveTrainer, model: nn.Module, inputs: dict[str, Any]
                 ) -> tuple[torch.Tensor, float]: ...


def training_progress(trainer: Trainer) -> float:
    """The fraction of training done (for objectives ramped over training, e.g. ReFT-r1's L1)."""
    return trainer.state.global_step / max(trainer.state.max_steps, 1)


def module_objective(trainer: ConceptTrainer, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """The trained module is its own objective: `model(**inputs, progress=...)` returns (loss to minimise, Σ over
    concepts of each concept's mean loss). Probe (`ProbeModel`: token BCE) and ReFT-r1 / SSV (`LMRank1Model`: the
    response LM loss) train with it; their loss runs in the forward, through the Trainer's (DDP-)wrapped model."""
    loss, per_concept_sum = model(**inputs, progress=training_progress(trainer))
    return loss, float(per_concept_sum) / trainer.n_concepts


class ObjectiveTrainer(Trainer):
    """The base of every gradient-trained method's trainer: a `Trainer` whose loss is a pluggable `Objective`.

    `compute_loss` is the objective's loss (a per-micro-batch mean; the Trainer divides it for gradient
    accumulation). `loss_history` means one thing for every trainer and method: **the mean loss of each optimiser
    step** — the objective's recorded loss averaged over the step's micro-batches (and, under a distributed
    launcher, over processes), regularisers excluded; on a concept axis, the mean over concepts of each concept's
    mean loss. `training_summary()` (what results record and cards / the CLI show) is read from it. The Trainer's
    own logged `loss` (`state.log_history`) stays the optimised quantity (Σ over concepts, regularisers in).

    `frozen` (the base model) gets no gradients until `train` returns, its flags then restored. Subclasses hook
    the optimiser step through `_before_step` / `_after_step`.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns the micro-batch loss; training_step divides it
    summary_metrics: tuple[str, ...] = ()  # logged metrics whose first and last values the summary also shows

    def __init__(self, *args: Any, objective: Objective, frozen: nn.Module | None = None, **kwargs: Any) -> None:
        self._freeze = contextlib.ExitStack()  # the base model stays frozen from here until `train` returns
        if frozen is not None:
            self._freeze.enter_context(frozen_model(frozen))
        self.objective = objective
        self.loss_history: list[float] = []
        self._running_loss = 0.0
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh:
            optimizer.register_step_pre_hook(lambda *_: self._before_step())
            optimizer.register_step_post_hook(lambda *_: self._after_step())
        return optimizer

    def _before_step(self) -> None:
        """Called before each optimiser step, after the Trainer's own gradient clipping."""

    def _after_step(self) -> None:
        """Called after each optimiser step: the step's mean loss joins `loss_history`."""
        loss = self._running_loss
        if self.accelerator.num_processes > 1:  # DDP: each process saw its own micro-batches; the step's mean
            loss = float(self.accelerator.reduce(torch.tensor(loss, device=self.accelerator.device), "mean"))
        self.loss_history.append(loss)
        self._running_loss = 0.0

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        loss, recorded = self.objective(self, model, inputs)
        self.record_loss(recorded)
        return loss

    def record_loss(self, loss: float) -> None:
        """Add a micro-batch's recorded loss to the running mean of the optimiser step."""
        self._running_loss += float(loss) / self.current_gradient_accumulation_steps

    def training_summary(self) -> dict[str, Any]:
        """Optimiser steps, the first and last step's loss (`loss_history`) and the first and last logged value of
        each of `summary_metrics`: what a result records and a card or the CLI shows."""
        summary: dict[str, Any] = {"steps": self.state.global_step}
        if self.loss_history:
            summary["loss"] = {"first": round(self.loss_history[0], 4), "last": round(self.loss_history[-1], 4)}
        logged = [entry for entry in self.state.log_history if "loss" in entry]  # the logging steps' entries
        for key in self.summary_metrics:
            values = [entry[key] for entry in logged if key in entry]
            if values:
                summary[key] = {"first": round(float(values[0]), 4), "last": round(float(values[-1]), 4)}
        return summary

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            self._freeze.close()


class ConceptTrainer(ObjectiveTrainer):
    """An `ObjectiveTrainer` whose parameters have a leading axis of `n_concepts` (see the module docstring).

    `objective` defaults to `module_objective` (the model's forward returns (loss, Σ over concepts of each
    concept's mean loss)). `unit_norm` names a [k, d] parameter kept at unit-norm rows.
    """

    def __init__(self, *args: Any, n_concepts: int, unit_norm: nn.Parameter | None = None,
                 frozen: nn.Module | None = None, concept_column: str = "concept_index",
                 objective: Objective = module_objective, **kwargs: Any) -> None:
        self.n_concepts = n_concepts
        self.unit_norm = unit_norm
        self.concept_column = concept_column
        self._per_concept_max_norm = 0.0
        super().__init__(*args, objective=objective, frozen=frozen, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        sampler = ConceptBatchSampler(self.train_dataset[self.concept_column], self.args.per_device_train_batch_size,
                                      self.args.seed)
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers)
        return self.accelerator.prepare(loader)

    def _before_step(self) -> None:
        trained = [p for p in self.model.parameters() if p.requires_grad]
        clip_per_concept_(trained, self.n_concepts, self._per_concept_max_norm)
        if self.unit_norm is not None:
            remove_parallel_gradient(self.unit_norm)

    def _after_step(self) -> None:
        if self.unit_norm is not None:
            normalise_(self.unit_norm)
        super()._after_step()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train`, with `max_grad_norm` applied per concept (the Trainer's joint clip would couple them)."""
        self._per_concept_max_norm = self.args.max_grad_norm
        self.args.max_grad_norm = 0.0
        try:
            return super().train(*args, **kwargs)
        finally:
            self.args.max_grad_norm = self._per_concept_max_norm
