"""Training HyperSteer's hypernetwork (spec §3.14): one network for all concepts, on transformers' `Trainer`.

    trainer = HyperSteerTrainer(target, HyperSteerConfig(layer=10), frame, concepts)
    trainer.train()
    result = trainer.export()              # a HyperSteerResult: any concept list → a steering dictionary

Each row is (concept, instruction, concept response[, the model's own answer]). A step: the target's
residuals `hidden_states[L]` over the prompt tokens (no grad; the target is frozen), the hypernetwork's Δ per
row from the concept description and those residuals, then the target's forward with h ← h + factor·Δ at
every position of block L's output, and the objective:
- `objective: lm` (the paper's): the concept response's mean token cross-entropy, factor 1;
- `objective: reps`: RePS's scaled SimPO (`losses.scaled_simpo`) over orig_add (+factor·Δ: the concept response
  should win) and orig_sub (Δ's positive projection removed, RePS's `null_it_out`: the own answer should win).
The trainer is the one training shape's `ObjectiveTrainer` with `HyperSteerObjective`; not a `ConceptTrainer`:
the shared network is clipped as a whole (the Trainer's `max_grad_norm`) and its batches mix concepts (the
Trainer's own sampler), since the per-concept machinery is for parameters with a concept axis, which a
hypernetwork does not have. `loss_history` is the mean loss of each optimiser step, as for every trainer.
Concepts in `held_out_concepts` are removed from the data before anything is tokenised.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from transformers import TrainingArguments

from axdata.concepts import Concept
from axdata.errors import InputError
from axmethods.factors import HYPERSTEER_FACTORS
from axmethods.hooks import hook_output
from axmethods.interventions import RowSteering
from axmethods.methods.hypernet import HyperNetwork, build_hypernetwork
from axmethods.methods.hypersteer import HyperSteerResult, concept_tokens, deltas
from axmethods.models import TargetModel, pad_token_id
from axmethods.trainers import losses
from axmethods.trainers.concept_trainer import ObjectiveTrainer, refuse_distributed
from axmethods.trainers.data import (
    PairCollator,
    check_preference_frame,
    forward_logits,
    pad_sequences,
    reference_logps,
    sequence_logps,
    tokenize_pairs,
)

logger = logging.getLogger(__name__)

OBJECTIVES = ("lm", "reps")
REFERENCE_PROMPTS = 32  # train instructions kept with the result for prompt-averaged dictionaries


@dataclass
class HyperSteerConfig(TrainingArguments):
    """Settings of HyperSteer (TrainingArguments names; the paper's values where they fit a CPU demo)."""

    output_dir: str | None = field(default=None, metadata={"help": "Trainer logs / checkpoints (temporary when "
                                                                   "None)."})
    learning_rate: float = field(default=8e-5, metadata={"help": "AdamW learning rate (paper: 8e-5)."})
    per_device_train_batch_size: int = field(default=12, metadata={"help": "Examples per micro-batch, all "
                                                                           "concepts mixed (paper: 12)."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Passes over the data (paper demo: 10)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Linear decay to 0 (paper)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the network's gradient norm (paper: 1.0)."})
    logging_steps: float = field(default=0.1, metadata={"help": "Log every N steps (below 1: that fraction)."})
    save_strategy: str = field(default="no", metadata={"help": "Trainer checkpoints: no | steps | epoch."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator needs every "
                                                                         "column."})

    layer: int | None = field(default=None, metadata={"help": "Block whose output Δ is added to (required)."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Hypernetwork blocks, initialised from the "
                                                                "target's first N (paper: 4; 2 for demo sizes)."})
    objective: str = field(default="lm", metadata={"help": "lm (the paper's: LM loss on the train positives) | "
                                                           "reps (RePS's loss on the preference split)."})
    held_out_concepts: list[int] = field(default_factory=list, metadata={
        "help": "Concept ids training never sees (AxBench's Concept500-HO); the result records them."})
    training_factors: list[float] = field(default_factory=lambda: [1.0], metadata={
        "help": "Factor(s) on Δ in training, one drawn per example (paper: 1)."})
    simpo_scaler: float = field(default=1.0, metadata={"help": "RePS: β_w = max((ref_l − ref_w) × scaler, 1)."})
    max_prompt_length: int = field(default=256, metadata={"help": "Truncate prompts to N tokens."})
    max_response_length: int = field(default=512, metadata={"help": "Truncate responses to N tokens."})
    max_concept_length: int = field(default=64, metadata={"help": "Truncate concept descriptions to N tokens."})
    reference_batch_size: int = field(default=16, metadata={"help": "Sequences per no-grad forward (RePS "
                                                                    "reference log-likelihoods)."})
    inference_factors: list[float] = field(default_factory=lambda: list(HYPERSTEER_FACTORS), metadata={
        "help": "The factor grid steering uses (paper: 0.0, 0.2, …, 1.8)."})

    def __post_init__(self) -> None:
        if self.output_dir is None:
            import tempfile

            self.output_dir = tempfile.mkdtemp(prefix="axbench-hypersteer-")
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise InputError(f"HyperSteerConfig.objective = {self.objective!r} is not one of {', '.join(OBJECTIVES)}.")
        if self.num_hidden_layers < 1 or not self.training_factors:
            raise InputError("HyperSteer needs num_hidden_layers ≥ 1 and at least one training factor.")


@contextlib.contextmanager
def adding(target: TargetModel, layer: int, delta: torch.Tensor, factors: torch.Tensor,
           remove: torch.Tensor | None = None) -> Any:
    """h ← h + factor·Δ on block `layer`'s output, every position (row b: Δ[b], factors[b]); rows with `remove`
    set get RePS's `null_it_out` instead: h ← h − ReLU(h·Δ)/‖Δ‖² · Δ.

    Both are the interventions registry's kinds (`addition`, `ablate_positive` with α = 0), the arithmetic
    `HyperSteerSteerer` steers with at inference.
    """
    vectors = delta.float()
    add = RowSteering(vectors, factors.float())
    null = RowSteering(vectors, torch.zeros_like(factors, dtype=torch.float32), "ablate_positive") \
        if remove is not None and bool(remove.any()) else None

    def apply(hidden: torch.Tensor, _call: Any) -> torch.Tensor:
        steered = add.apply(hidden)
        if null is None or remove is None:
            return steered
        return torch.where(remove[:, None, None], null.apply(hidden), steered)

    with hook_output(target.residual_module(layer), apply):
        yield


class HyperSteerModel(nn.Module):
    """The trained module: the hypernetwork (registered) and the frozen target (held, not registered)."""

    def __init__(self, target: TargetModel, network: HyperNetwork) -> None:
        super().__init__()
        self.network = network
        self.target = target

    @property
    def config(self) -> Any:
        return self.target.model.config

    def train(self, mode: bool = True) -> HyperSteerModel:
        super().train(mode)
        self.target.model.eval()
        return self


class HyperSteerObjective:
    """HyperSteer's objective (an `Objective` of `ObjectiveTrainer`): Δ per row from the hypernetwork, the target's
    forward steered by factor·Δ, then `objective`'s loss (lm: the response's mean token cross-entropy; reps: scaled
    SimPO over orig_add and orig_sub), a mean over the micro-batch's rows. Each row's training factor is drawn
    from its own generator (seeded `seed + 1`); `tokens[i]` are concept i's description tokens."""

    def __init__(self, tokens: list[list[int]], seed: int) -> None:
        self.tokens = tokens
        self.factor_generator = torch.Generator().manual_seed(seed + 1)

    def __call__(self, trainer: HyperSteerTrainer, model: nn.Module, inputs: dict[str, Any]
                 ) -> tuple[torch.Tensor, float]:
        cfg: HyperSteerConfig = trainer.args
        target, device = trainer.target, trainer.target.device
        concept = inputs["concept_index"]
        n = len(concept)
        delta = deltas(model.network, target, cfg.layer, [self.tokens[int(c)] for c in concept], inputs["prompt_ids"])
        choices = torch.tensor(cfg.training_factors, dtype=torch.float32)
        factor = choices[torch.randint(len(choices), (n,), generator=self.factor_generator)].to(device)
        if cfg.objective == "lm":
            batch = pad_sequences(inputs["prompt_ids"], inputs["winning_ids"], pad_token_id(target),
                                  target.prefix_length).to(device)
            with adding(target, cfg.layer, delta, factor):
                logps, lengths = sequence_logps(forward_logits(target.model, batch), batch)
            loss = losses.language_modelling(logps, lengths).mean()
        else:  # orig_add rows (winning, losing), then orig_sub rows (winning, losing): one stacked forward
            prompts = list(inputs["prompt_ids"]) * 4
            responses = [*inputs["winning_ids"], *inputs["losing_ids"]] * 2
            batch = pad_sequences(prompts, responses, pad_token_id(target), target.prefix_length).to(device)
            remove = torch.arange(4 * n, device=device) >= 2 * n
            with adding(target, cfg.layer, delta.repeat(4, 1), factor.repeat(4), remove):
                logps, lengths = sequence_logps(forward_logits(target.model, batch), batch)
            ref_w, ref_l = inputs["ref_winning_logp"].to(device), inputs["ref_losing_logp"].to(device)
            w, lo = slice(0, n), slice(n, 2 * n)
            add = losses.scaled_simpo(logps[w], logps[lo], lengths[w], lengths[lo], ref_w, ref_l, cfg.simpo_scaler)
            sub_w, sub_l = slice(3 * n, 4 * n), slice(2 * n, 3 * n)  # orig_sub: the own answer is the winner
            sub = losses.scaled_simpo(logps[sub_w], logps[sub_l], lengths[sub_w], lengths[sub_l], ref_l, ref_w,
                                      cfg.simpo_scaler)
            loss = torch.cat([add, sub]).mean()
        return loss, float(loss.detach())


class HyperSteerTrainer(ObjectiveTrainer):
    """The hypernetwork's trainer: an `ObjectiveTrainer` with `HyperSteerObjective` (`loss_history`: the mean loss
    of each optimiser step)."""

    def __init__(self, target: TargetModel, args: HyperSteerConfig, train_dataset: pd.DataFrame,
                 concepts: Sequence[Concept], *, method_name: str = "hypersteer",
                 reference_prompts: Sequence[str] = (), callbacks: list | None = None) -> None:
        refuse_distributed("HyperSteer")
        if args.layer is None:
            raise InputError("HyperSteer needs a layer (--layer L): the block whose output Δ is added to.")
        target.validate_layer(args.layer)
        held = set(args.held_out_concepts)
        self.all_concepts = list(concepts)
        self.concepts = [c for c in concepts if c.concept_id not in held]
        if not self.concepts:
            raise InputError("HyperSteer has no concept left to train on: every concept is in held_out_concepts.")
        self.held_out = [c for c in concepts if c.concept_id in held]
        self.target, self.method_name = target, method_name
        pairs = args.objective == "reps"
        frame = train_dataset[~train_dataset["concept_id"].isin(held)] if "concept_id" in train_dataset else \
            train_dataset  # held-out concepts never reach tokenisation
        frame = check_preference_frame(frame, self.concepts, "HyperSteer's training data", with_losing=pairs)
        self.reference_prompts = list(reference_prompts) or \
            list(dict.fromkeys(frame["input"].astype(str)))[:REFERENCE_PROMPTS]
        rows = tokenize_pairs(target, frame, self.concepts, max_prompt_length=args.max_prompt_length,
                              max_response_length=args.max_response_length, with_losing=pairs)
        ref_w, ref_l = reference_logps(target, rows, args.reference_batch_size, progress=not args.disable_tqdm) \
            if pairs else (torch.zeros(len(rows)), torch.zeros(len(rows)))
        tokens = concept_tokens(target, self.concepts, args.max_concept_length)
        torch.manual_seed(args.seed)
        network = build_hypernetwork(target.model, target.decoder_layers(), args.layer, args.num_hidden_layers)
        super().__init__(model=HyperSteerModel(target, network), args=args,
                         train_dataset=rows.to_dataset(ref_w, ref_l), data_collator=PairCollator(),
                         processing_class=target.tokenizer, callbacks=callbacks,
                         objective=HyperSteerObjective(tokens, args.seed), frozen=target.model)

    @property
    def network(self) -> HyperNetwork:
        return self.model.network

    def export(self) -> HyperSteerResult:
        cfg: HyperSteerConfig = self.args
        record = {key: getattr(cfg, key) for key in (
            "learning_rate", "per_device_train_batch_size", "num_train_epochs", "max_steps", "max_grad_norm",
            "seed", "objective", "training_factors", "max_prompt_length", "max_response_length",
            "max_concept_length")}
        return HyperSteerResult(
            concepts=self.concepts, held_out=self.held_out, method=self.method_name, base_model=self.target.model_id,
            base_model_revision=self.target.revision, layer=cfg.layer, shape=self.network.shape.to_dict(),
            state=self.network.trained_state(), reference_prompts=self.reference_prompts,
            config={**record, "steering_factors": [float(f) for f in cfg.inference_factors],
                    "training_summary": self.training_summary(), "steps": self.state.global_step})


def train_hypersteer(target: TargetModel, read_split: Callable[[str], pd.DataFrame | None],
                     concepts: Sequence[Concept], settings: HyperSteerConfig, *, method_name: str = "hypersteer",
                     progress: Callable[[str], None] | None = None) -> HyperSteerResult:
    """Train on the `train` split's positives (objective lm) or the `preference` split (objective reps)."""
    from axmethods.trainers.data import positives_frame, preference_frame

    train = read_split("train")
    held = set(settings.held_out_concepts)
    seen = [c for c in concepts if c.concept_id not in held]
    if settings.objective == "lm":
        if train is None:
            raise FileNotFoundError("hypersteer (objective lm) trains on the train split, and the dataset has none.")
        frame = positives_frame(train, seen)
    else:
        frame = read_split("preference")
        if frame is None:
            if train is None:
                raise FileNotFoundError("hypersteer (objective reps) needs the preference split or a train split.")
            (progress or logger.info)("hypersteer: no preference split; pairing each train positive with the "
                                      f"{target.model_id}'s greedy answer")
            frame = preference_frame(target, train, seen)
    trainer = HyperSteerTrainer(target, settings, frame, concepts, method_name=method_name)
    trainer.train()
    if progress:
        progress(f"{method_name}: trained one network on {len(trainer.concepts)} concepts "
                 f"({len(trainer.held_out)} held out)")
    return trainer.export()
