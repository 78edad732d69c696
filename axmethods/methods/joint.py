"""Training settings of the gradient-trained rank-1 methods (Probe, ReFT-r1, SSV) and their run on `ConceptTrainer`.

All concepts of a chunk are rows of one fp32 parameter [k, d], trained by `axmethods.trainers.ConceptTrainer`
(the one training engine): each step gives every concept a mini-batch of its *own* examples and the loss
is the sum of the per-concept mean losses, so joint training equals k separate runs. The settings use
TrainingArguments' names (one settings vocabulary with the RePS family and the Trainer).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from torch import nn
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from axmethods.methods.base import MethodConfig, TrainingSet
from axmethods.trainers.concept_trainer import ConceptTrainer


@dataclass
class TrainingSettings(MethodConfig):
    """TrainingArguments' names for what the rank-1 methods' training needs (defaults: each method's paper)."""

    learning_rate: float = field(default=1e-2, metadata={"help": "AdamW learning rate (linear decay to 0, no warmup)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over each concept's examples."})
    per_device_train_batch_size: int = field(default=6, metadata={"help": "Examples PER CONCEPT per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step "
                                                                          "(the Trainer's: within an epoch)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping of each concept on its own; "
                                                                "0 = none."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (the parameters stay fp32)."})
    output_dir: str | None = field(default=None, metadata={"help": "Trainer logs and checkpoints, one folder per "
                                                                   "chunk of concepts (a temporary folder when None)."})
    save_strategy: str = field(default="no", metadata={"help": "Trainer checkpoints: no | steps | epoch."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every N optimiser steps (save_strategy "
                                                             "steps)."})
    resume_from_checkpoint: bool = field(default=False, metadata={"help": "Resume each chunk from its last "
                                                                          "checkpoint in output_dir, if any."})

    def training_arguments(self, output_dir: str) -> TrainingArguments:
        """The Trainer's settings: AdamW (torch's, as AxBench), linear decay with no warmup, seeded."""
        return TrainingArguments(
            output_dir=output_dir, learning_rate=self.learning_rate, num_train_epochs=self.num_train_epochs,
            per_device_train_batch_size=self.per_device_train_batch_size, weight_decay=self.weight_decay,
            gradient_accumulation_steps=self.gradient_accumulation_steps, max_grad_norm=self.max_grad_norm,
            lr_scheduler_type="linear", warmup_steps=0, optim="adamw_torch", seed=self.seed, bf16=self.bf16,
            save_strategy=self.save_strategy, save_steps=self.save_steps, logging_strategy="no", report_to="none",
            remove_unused_columns=False, dataloader_pin_memory=False)


def examples_dataset(data: TrainingSet) -> datasets.Dataset:
    """One row per (concept, example): `concept_index`, `example` (row of `data`) and its `label`."""
    valid = data.members >= 0
    concept = valid.nonzero(as_tuple=True)[0]
    return datasets.Dataset.from_dict({"concept_index": concept.tolist(), "example": data.members[valid].tolist(),
                                       "label": data.labels[valid].tolist()})


def train_chunk(model: nn.Module, data: TrainingSet, collator: Any, settings: TrainingSettings, *,
                unit_norm: nn.Parameter | None = None, frozen: nn.Module | None = None) -> ConceptTrainer:
    """Train `model` (forward → (loss, Σ per-concept losses): `ConceptTrainer`'s `module_objective`) on `data`'s
    examples; returns the trainer (its `loss_history`: the mean per-concept loss of each optimiser step).

    Each chunk has its own folder under `output_dir`, named by its first concept, so a resumed run finds it.
    """
    root = settings.output_dir or tempfile.mkdtemp(prefix="axbench-train-")
    folder = str(Path(root) / f"concepts_from_{data.concepts[0].concept_id}")
    trainer = ConceptTrainer(model=model, args=settings.training_arguments(folder), train_dataset=examples_dataset(data),
                             data_collator=collator, n_concepts=data.n_concepts, unit_norm=unit_norm, frozen=frozen)
    resume = get_last_checkpoint(folder) if settings.resume_from_checkpoint and Path(folder).is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    return trainer
