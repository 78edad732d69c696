"""`RePSTrainer`: preference-trained (RePS, BiPO) and LM-objective steering on TRL's trainer infrastructure.

    trainer = RePSTrainer(model=target, args=RePSConfig(layer=10), train_dataset=pairs, concepts=concepts)
    trainer.train()
    dictionary = trainer.export()           # a SteeringDictionary (vector) or ConceptAdapters (LoRA / LoReFT)

`model` is an `axmethods.models.TargetModel` (the frozen base model and its chat facts); `train_dataset` is the
`preference` split (input, winning_output, losing_output, concept_id) as a `datasets.Dataset` or a pandas frame.
The base model's weights never receive gradients and are bitwise unchanged; the intervention's parameters are
fp32 with a leading concept axis, so every concept of the run trains in the same forward passes, on the one
training engine (`axmethods.trainers.concept_trainer.ConceptTrainer`, its objective `PreferenceObjective`;
`loss_history` is the mean per-concept loss of each optimiser step). Checkpoints hold the intervention only,
so `trainer.train(resume_from_checkpoint=...)` works; the per-step factor draws restart from their seed.

Each step, for each pair kind and each example, one factor α is drawn from `training_factors`:
- `orig_add`: steer with +α; the concept response y_c should win over the model's own answer y;
- `orig_sub`: steer with the concept removed (`null_it_out`) or −α (`negate`); y should win over y_c.
Both kinds' winning and losing sequences go through the model in one stacked forward.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import datasets
import pandas as pd
import torch
from torch import nn

from axdata.concepts import Concept
from axdata.errors import InputError
from axmethods.models import TargetModel, pad_token_id
from axmethods.trainers import losses
from axmethods.trainers.concept_trainer import ConceptTrainer, refuse_distributed
from axmethods.trainers.config import RePSConfig
from axmethods.trainers.data import (
    PairCollator,
    check_preference_frame,
    forward_logits,
    pad_sequences,
    reference_logps,
    sequence_logps,
    tokenize_pairs,
)
from axmethods.trainers.parameterisations import ConceptIntervention, RowPlan, new_intervention

logger = logging.getLogger(__name__)

REPS_CITATION = """\
@inproceedings{wu2025reps,
  title     = {Improved Representation Steering for Language Models},
  author    = {Wu, Zhengxuan and Yu, Qinan and Arora, Aryaman and Manning, Christopher D. and Potts, Christopher},
  year      = {2025},
  eprint    = {2505.20809},
  archivePrefix = {arXiv}
}"""


def default_intervention_layers(num_layers: int) -> list[int]:
    """The paper's LoRA / LoReFT layers [5, 10, 15, 20] of Gemma-2-2B's 26, at the same depths of this model."""
    return sorted({min(num_layers - 1, round(layer * num_layers / 26)) for layer in (5, 10, 15, 20)})


class SteeringModel(nn.Module):
    """The frozen target model with a concept intervention: the only parameters that train are the intervention's.

    The base model is held, not registered: `state_dict` (the Trainer's checkpoints) is the intervention's.
    """

    def __init__(self, target: TargetModel, intervention: ConceptIntervention) -> None:
        super().__init__()
        self.intervention = intervention.to(target.device)
        self.target = target

    @property
    def base(self) -> nn.Module:
        return self.target.model

    @property
    def config(self) -> Any:
        return self.base.config

    def train(self, mode: bool = True) -> SteeringModel:
        super().train(mode)
        self.base.eval()  # the base model's dropout stays off: the reference and the policy see the same model
        return self


class PreferenceObjective:
    """The RePS family's objective (an `Objective` of `ConceptTrainer`): per pair kind, one stacked forward of the
    steered model over the winning (+ losing) responses, then `loss_type`'s loss per pair (scaled SimPO, DPO or
    the LM loss), summed over concepts of each concept's mean. It draws each example's training factor (its own
    generator, seeded `seed + 1`) and keeps the margins / log-likelihoods `RePSTrainer.log` adds to the logs."""

    def __init__(self, seed: int) -> None:
        self.factor_generator = torch.Generator().manual_seed(seed + 1)
        self.metrics: dict[str, list[float]] = defaultdict(list)

    @staticmethod
    def plan(cfg: RePSConfig, kind: str, concept: torch.Tensor, factor: torch.Tensor, n_responses: int) -> RowPlan:
        """The intervention of one pair kind for its stacked winning (+ losing) sequences."""
        concepts = concept.repeat(n_responses)
        if kind == "orig_add":
            return RowPlan(concepts, factor.repeat(n_responses))
        if cfg.subtraction_type == "null_it_out":
            return RowPlan(concepts, torch.zeros_like(factor).repeat(n_responses),
                           subtract=torch.ones(len(concepts), dtype=torch.bool, device=concept.device))
        return RowPlan(concepts, (-factor).repeat(n_responses))

    def __call__(self, trainer: RePSTrainer, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, float]:
        cfg: RePSConfig = trainer.args
        target = trainer.target
        device = target.device
        concept = inputs["concept_index"].to(device)
        n = len(concept)
        kinds = cfg.pair_kinds
        responses = [inputs["winning_ids"]] if cfg.loss_type == "lm" else [inputs["winning_ids"], inputs["losing_ids"]]
        choices = torch.tensor(cfg.training_factors, dtype=torch.float32)
        plans, prompts, targets = [], [], []
        for kind in kinds:
            factor = choices[torch.randint(len(choices), (n,), generator=self.factor_generator)].to(device)
            plans.append(self.plan(cfg, kind, concept, factor, len(responses)))
            for texts in responses:
                prompts += inputs["prompt_ids"]
                targets += texts
        batch = pad_sequences(prompts, targets, pad_token_id(target), target.prefix_length).to(device)
        plan = RowPlan(torch.cat([p.concepts for p in plans]), torch.cat([p.factors for p in plans]),
                       subtract=_cat_optional([p.subtract for p in plans], [len(p.concepts) for p in plans], device),
                       mask=batch.prompt_mask if cfg.intervention_positions == "prompt" else None)
        with trainer.intervention.applied(target, plan):
            logits = forward_logits(model.base, batch)
        logps, lengths = sequence_logps(logits, batch)
        per_row = []
        width = n * len(responses)
        for index, kind in enumerate(kinds):
            part = slice(index * width, (index + 1) * width)
            kind_logps, kind_lengths = logps[part], lengths[part]
            winning, len_winning = kind_logps[:n], kind_lengths[:n]
            if cfg.loss_type == "lm":
                per_row.append(losses.language_modelling(winning, len_winning))
                self.metrics["logps/winning"].append(float((winning.detach() / len_winning.clamp_min(1)).mean()))
                continue
            losing, len_losing = kind_logps[n:], kind_lengths[n:]
            ref_w, ref_l = inputs["ref_winning_logp"].to(device), inputs["ref_losing_logp"].to(device)
            if kind == "orig_sub":  # the model's own answer is the chosen one
                winning, losing, len_winning, len_losing, ref_w, ref_l = losing, winning, len_losing, len_winning, \
                    ref_l, ref_w
            if cfg.loss_type == "scaled_simpo":
                loss = losses.scaled_simpo(winning, losing, len_winning, len_losing, ref_w, ref_l, cfg.simpo_scaler)
            else:
                loss = losses.dpo(winning, losing, ref_w, ref_l, cfg.beta)
            per_row.append(loss)
            margin = winning / len_winning.clamp_min(1) - losing / len_losing.clamp_min(1)
            self.metrics[f"margin/{kind}"].append(float(margin.detach().mean()))
            self.metrics[f"loss/{kind}"].append(float(loss.detach().mean()))
        total = losses.per_concept_sum(torch.cat(per_row), concept.repeat(len(kinds)), trainer.n_concepts)
        return total, float(total.detach()) / trainer.n_concepts


class RePSTrainer(ConceptTrainer):
    """Trainer for RePS (reference-free scaled SimPO), BiPO (DPO) and "Lang." (LM loss) steering interventions."""

    _tag_names = ["trl", "axbench", "steering", "reps"]  # noqa: RUF012 (TRL's class-attribute convention)
    _name = "RePS"
    _paper = {  # noqa: RUF012
        "title": "Improved Representation Steering for Language Models",
        "id": "2505.20809",
        "citation": REPS_CITATION,
    }
    summary_metrics = ("margin/orig_add", "margin/orig_sub", "logps/winning")

    def __init__(self, model: TargetModel, args: RePSConfig | None = None,
                 train_dataset: datasets.Dataset | pd.DataFrame | None = None,
                 processing_class: Any = None, *, concepts: Sequence[Concept], callbacks: list | None = None,
                 method_name: str = "reps") -> None:
        if not isinstance(model, TargetModel):
            raise TypeError(f"RePSTrainer takes an axmethods TargetModel as `model` (load_target_model(...)); got "
                            f"{type(model).__name__}.")
        refuse_distributed("The RePS family (RePS, BiPO, Lang., their LoRA / LoReFT forms)")
        if train_dataset is None:
            raise InputError("RePSTrainer needs a train_dataset: the preference split (input, winning_output, "
                             "losing_output, concept_id).")
        args = args or RePSConfig()
        if not concepts:
            raise InputError("RePSTrainer needs at least one concept.")
        self.concepts = list(concepts)
        self.method_name = method_name
        self.target = model
        layers = self._layers(args, model)
        generator = torch.Generator().manual_seed(args.seed)
        intervention = new_intervention(
            args.parameterisation, model, len(self.concepts), layers, rank=args.low_rank_dimension,
            dropout=args.intervention_dropout, lora_alpha=args.lora_alpha, lora_target_module=args.lora_target_module,
            init_std=args.init_std, train_bias=args.train_bias, generator=generator)
        pairs = args.loss_type != "lm"  # the LM objective needs neither losing answers nor a reference
        if isinstance(train_dataset, datasets.Dataset):
            train_dataset = train_dataset.to_pandas()
        frame = check_preference_frame(train_dataset, self.concepts, "the preference data", with_losing=pairs)
        rows = tokenize_pairs(model, frame, self.concepts, max_prompt_length=args.max_prompt_length,
                              max_response_length=args.max_response_length, with_losing=pairs)
        if pairs:
            ref_winning, ref_losing = reference_logps(model, rows, args.reference_batch_size,
                                                      progress=not args.disable_tqdm)
        else:
            ref_winning = ref_losing = torch.zeros(len(rows))
        super().__init__(model=SteeringModel(model, intervention), args=args, train_dataset=rows.to_dataset(
            ref_winning, ref_losing), data_collator=PairCollator(), processing_class=processing_class or model.tokenizer,
            callbacks=callbacks, n_concepts=len(self.concepts), frozen=model.model,
            objective=PreferenceObjective(args.seed))

    @staticmethod
    def _layers(args: RePSConfig, target: TargetModel) -> list[int]:
        if args.parameterisation == "vector":
            if args.layer is None:
                raise InputError("RePSConfig.layer is required for a steering vector: the block whose output it "
                                 "steers (e.g. --layer 10).")
            return [args.layer]
        return list(args.intervention_layers or default_intervention_layers(target.num_layers))

    @property
    def intervention(self) -> ConceptIntervention:
        return self.model.intervention

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            metrics = self.objective.metrics
            logs = {**logs, **{key: sum(values) / len(values) for key, values in metrics.items() if values}}
            metrics.clear()
        super().log(logs, start_time)

    def export(self) -> Any:
        """The trained result: a `SteeringDictionary` (vector) or `ConceptAdapters` (LoRA / LoReFT)."""
        from axmethods.trainers.artifacts import export_intervention

        return export_intervention(self.intervention, self.target, self.concepts, self.args,
                                   method=self.method_name, trainer=self)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None) -> None:
        """Write the exported artefact's card (with this trainer's name, paper and tags) into `output_dir`."""
        self.export().save(self.args.output_dir, datasets=[dataset_name] if dataset_name else ())


def _cat_optional(parts: list[torch.Tensor | None], sizes: list[int], device: torch.device) -> torch.Tensor | None:
    if all(part is None for part in parts):
        return None
    return torch.cat([part if part is not None else torch.zeros(size, dtype=torch.bool, device=device)
                      for part, size in zip(parts, sizes)])
