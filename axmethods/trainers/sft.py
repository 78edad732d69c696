"""AxBench's finetuning baselines (spec §3.12) on TRL's `SFTTrainer`: LoRA-SFT and full SFT, one concept at a time.

Each concept trains on its positive rows of the train split in AxBench's LM view: the chat-templated user
turn with the generation prompt, then the raw response with no EOS ("nonstop"); the loss covers the
response tokens only. The examples reach TRL already tokenized (`input_ids` + `completion_mask`) because
TRL appends EOS to every text completion and tokenizes prompt text with special tokens (a second <bos>
on Gemma); `TargetModel.encode_turn` tokenizes them, as it does for every LM-trained method (ReFT-r1, SSV,
the RePS family, HyperSteer).

- LoRA-SFT (`peft=True`, method `lora`): peft's LoRA on `o_proj` of a few layers; after each concept the
  trained A/B matrices are read out and the model unwrapped, and all concepts are stacked into one
  `LoRAIntervention` with peft's exact arithmetic → `ConceptAdapters` (steered batched across concepts).
- Full SFT (`peft=False`, method `sft`): every weight trains; the concept's weights go to a safetensors
  file and the base weights are copied back bitwise → `FinetunedConcepts` (steered one concept per batch).
"""

from __future__ import annotations

import gc
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file
from trl import SFTConfig

from axdata.concepts import Concept
from axdata.errors import InputError
from axdata.io import atomic_path
from axmethods.distributed import is_main
from axmethods.models import TargetModel, frozen
from axmethods.trainers.artifacts import ConceptAdapters
from axmethods.trainers.finetuned import FinetunedConcepts, concept_weights_path
from axmethods.trainers.parameterisations import LoRAIntervention, lora_module_paths
from axmethods.trainers.reps_trainer import default_intervention_layers

logger = logging.getLogger(__name__)

# Paper settings (spec §3.12, Gemma-2-2B) that differ between the two kinds: (LoRA-SFT, full SFT).
PAPER_DEFAULTS = {"gradient_accumulation_steps": (2, 4), "num_train_epochs": (24.0, 8.0),
                  "learning_rate": (9e-4, 4e-5)}
RECORDED_FIELDS = ("peft", "lora_rank", "lora_alpha", "use_rslora", "lora_dropout", "lora_target_module",
                   "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                   "max_steps", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "max_length",
                   "seed")
TRAIN_COLUMNS = ("input", "output", "category", "concept_id")


class SFTDataError(InputError):
    """The train split cannot feed SFT (columns missing, a concept without positives)."""


@dataclass
class SFTSteeringConfig(SFTConfig):
    """Settings of AxBench's LoRA-SFT (`peft=True`) and full-SFT (`peft=False`) baselines on TRL's SFTTrainer.

    Fields left None take the paper's value for the chosen kind (`PAPER_DEFAULTS`): LoRA-SFT batch 18 × 2,
    24 epochs, lr 9e-4; full SFT batch 18 × 4, 8 epochs, lr 4e-5.
    """

    # SFTConfig / TrainingArguments fields with this baseline's defaults.
    output_dir: str | None = field(default=None, metadata={"help": "Where the trainer writes logs and, for full SFT, "
                                                                   "each concept's weights (a temporary folder when "
                                                                   "None)."})
    learning_rate: float | None = field(default=None, metadata={"help": "AdamW learning rate; None = paper "
                                                                        "(LoRA-SFT 9e-4, full SFT 4e-5)."})
    per_device_train_batch_size: int = field(default=18, metadata={"help": "Examples per micro-batch (paper: 18)."})
    gradient_accumulation_steps: int | None = field(default=None, metadata={
        "help": "Micro-batches per optimiser step; None = paper (LoRA-SFT 2, full SFT 4)."})
    num_train_epochs: float | None = field(default=None, metadata={"help": "Passes over each concept's positives; "
                                                                           "None = paper (LoRA-SFT 24, full SFT 8)."})
    activation_checkpointing: bool | None = field(default=None, metadata={
        "help": "Trade compute for memory; None = off (TRL turns it on; the paper's 2B runs fit without it)."})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Deprecated alias of activation_checkpointing (None = follow it)."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; None = on when CUDA supports "
                                                              "bf16, off otherwise (CPU runs stay fp32)."})
    completion_only_loss: bool | None = field(default=True, metadata={"help": "Loss on the response tokens only "
                                                                             "(AxBench: prompt labels are −100)."})
    save_strategy: str = field(default="no", metadata={"help": "Trainer checkpoints: 'no' (the result is exported "
                                                               "at the end of each concept) | 'steps' | 'epoch'."})
    report_to: str | list[str] | None = field(default="none", metadata={"help": "Experiment trackers "
                                                                                "(none, wandb, trackio, ...)."})

    # The baseline.
    peft: bool = field(default=True, metadata={"help": "True: LoRA-SFT (method lora) → ConceptAdapters; False: full "
                                                       "fine-tuning (method sft) → FinetunedConcepts."})
    lora_rank: int = field(default=4, metadata={"help": "LoRA rank r (paper: 4)."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (paper: 32; rsLoRA scaling alpha/√r)."})
    use_rslora: bool = field(default=True, metadata={"help": "rsLoRA scaling alpha/√r instead of alpha/r (paper: "
                                                             "on)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input in training (paper: "
                                                                "0.05)."})
    lora_layers: list[int] | None = field(default=None, metadata={
        "help": "Layers whose o_proj gets a LoRA; None = the paper's [5, 10, 15, 20] of 26 scaled to the model's "
                "depth."})
    lora_target_module: str = field(default="self_attn.o_proj", metadata={
        "help": "Module inside each decoder block that LoRA adapts (paper: o_proj)."})
    inference_factors: list[float] = field(default_factory=lambda: [1.0], metadata={
        "help": "Factor grid of steering inference (AxBench: the factor is ignored, so [1.0])."})

    def __post_init__(self) -> None:
        if self.output_dir is None:
            self.output_dir = tempfile.mkdtemp(prefix="axbench-sft-")
        kind = 0 if self.peft else 1
        for name, values in PAPER_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, values[kind])
        if self.bf16 is None:
            self.bf16 = not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()
        if self.lora_rank < 1 or not 0.0 <= self.lora_dropout < 1.0:
            raise InputError(f"SFTSteeringConfig: lora_rank must be ≥ 1 and lora_dropout in [0, 1); got "
                             f"{self.lora_rank} and {self.lora_dropout}.")
        if not self.inference_factors:
            raise InputError("SFTSteeringConfig.inference_factors is empty; give at least one factor (AxBench: 1.0).")


def train_sft(target: TargetModel, data: pd.DataFrame, concepts: Sequence[Concept], config: SFTSteeringConfig, *,
              method: str) -> ConceptAdapters | FinetunedConcepts:
    """Train every concept on its positives of the train split `data`, one SFTTrainer run per concept.

    The target model is left as it was (weights bitwise, parameter flags, train/eval mode).
    """
    check_train_frame(data, concepts)
    if config.peft:
        return _train_lora_sft(target, data, concepts, config, method=method)
    return _train_full_sft(target, data, concepts, config, method=method)


def check_train_frame(data: pd.DataFrame, concepts: Sequence[Concept]) -> None:
    missing = sorted(set(TRAIN_COLUMNS) - set(data.columns))
    if missing:
        raise SFTDataError(f"the train frame lacks columns {missing}; pass the `train` split "
                           "(axdata.builders.read_split(dir, config, 'train')).")
    if not concepts:
        raise SFTDataError("no concepts to train; pass at least one Concept.")
    positives = data[data["category"].eq("positive")]
    empty = [c.concept_id for c in concepts if not positives["concept_id"].eq(c.concept_id).any()]
    if empty:
        raise SFTDataError(f"concepts {empty[:10]} have no positive rows in the train split; drop them from the "
                           "concept list or regenerate their data.")


def concept_dataset(target: TargetModel, data: pd.DataFrame, concept_id: int) -> Any:
    """The concept's positives, tokenized as AxBench's LM view (prompt + raw response, no EOS), loss on the response."""
    from datasets import Dataset

    rows = data[data["concept_id"].eq(concept_id) & data["category"].eq("positive")]
    input_ids, completion_mask = [], []
    for instruction, output in zip(rows["input"], rows["output"]):
        prompt, completion = target.encode_turn(instruction, output)
        input_ids.append(prompt + completion)
        completion_mask.append([0] * len(prompt) + [1] * len(completion))
    return Dataset.from_dict({"input_ids": input_ids, "completion_mask": completion_mask})


def _run_trainer(target: TargetModel, dataset: Any, config: SFTSteeringConfig, peft_config: Any = None) -> Any:
    """One SFTTrainer run on `target.model` (wrapped by peft in place when `peft_config` is given)."""
    from trl import SFTTrainer

    trainer = SFTTrainer(model=target.model, args=config, train_dataset=dataset, processing_class=target.tokenizer,
                         peft_config=peft_config)
    trainer.train()
    return trainer


def _concept_config(config: SFTSteeringConfig, concept_id: int) -> SFTSteeringConfig:
    """The run's config with a per-concept logging folder, so concepts never share trainer state on disk."""
    import dataclasses

    return dataclasses.replace(config, output_dir=str(Path(config.output_dir) / f"run_concept_{concept_id}"))


def _final_loss(trainer: Any) -> float | None:
    return trainer.state.log_history[-1].get("train_loss") if trainer.state.log_history else None


def _free(trainer: Any) -> None:
    """Drop the trainer (optimizer state, peft wrapper) before the next concept."""
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _training_record(config: SFTSteeringConfig, layers: list[int] | None, losses: dict[str, float | None]
                     ) -> dict[str, Any]:
    factors = [float(f) for f in config.inference_factors]
    return {**{name: getattr(config, name) for name in RECORDED_FIELDS}, "intervention_layers": layers,
            "loss_type": "sft", "trainer": "SFTTrainer", "trainer_name": "SFT", "steering_factors": factors,
            "inference_factors": factors, "factor_free": True, "train_loss": losses}


def _train_lora_sft(target: TargetModel, data: pd.DataFrame, concepts: Sequence[Concept], config: SFTSteeringConfig,
                    *, method: str) -> ConceptAdapters:
    from peft import LoraConfig

    layers = [target.validate_layer(layer) for layer in (config.lora_layers
                                                         or default_intervention_layers(target.num_layers))]
    projection = target.residual_module(layers[0]).get_submodule(config.lora_target_module)
    intervention = LoRAIntervention(len(concepts), layers, projection.in_features, projection.out_features,
                                    rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                                    rslora=config.use_rslora, target_module=config.lora_target_module,
                                    module_paths=lora_module_paths(target, layers, config.lora_target_module))
    losses: dict[str, float | None] = {}
    for index, concept in enumerate(concepts):
        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, use_rslora=config.use_rslora,
                                 lora_dropout=config.lora_dropout, target_modules=[config.lora_target_module],
                                 layers_to_transform=layers, bias="none", task_type="CAUSAL_LM")
        with frozen(target.model):
            trainer = _run_trainer(target, concept_dataset(target, data, concept.concept_id),
                                   _concept_config(config, concept.concept_id), peft_config)
            try:
                a, b = _read_lora(target, layers, config.lora_target_module)
            finally:
                trainer.model.unload()  # unwraps in place: the o_proj modules are the base Linear layers again
        with torch.no_grad():
            intervention.lora_A[index].copy_(a)
            intervention.lora_B[index].copy_(b)
        losses[str(concept.concept_id)] = _final_loss(trainer)
        _free(trainer)
        logger.info("LoRA-SFT concept %d (%d/%d): train loss %s", concept.concept_id, index + 1, len(concepts),
                    losses[str(concept.concept_id)])
    return ConceptAdapters(intervention=intervention.eval(), concepts=list(concepts), base_model=target.model_id,
                           base_model_revision=target.revision, method=method,
                           config=_training_record(config, layers, losses))


def _read_lora(target: TargetModel, layers: list[int], module_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained peft LoRA as `LoRAIntervention` rows: A [n_layers, r, in], B [n_layers, out, r] (fp32, CPU)."""
    a, b = [], []
    for layer in layers:
        module = target.residual_module(layer).get_submodule(module_path)
        if not hasattr(module, "lora_A"):
            raise InputError(f"peft put no LoRA on {target.residual_module_path(layer)}.{module_path}; its "
                               "target_modules / layers_to_transform did not match this model's module names.")
        a.append(module.lora_A["default"].weight.detach().float().cpu())
        b.append(module.lora_B["default"].weight.detach().float().cpu())
    return torch.stack(a), torch.stack(b)


def _train_full_sft(target: TargetModel, data: pd.DataFrame, concepts: Sequence[Concept], config: SFTSteeringConfig,
                    *, method: str) -> FinetunedConcepts:
    model = target.model
    originals = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}
    weights_root = Path(config.output_dir) / "weights"
    files: dict[int, Path] = {}
    losses: dict[str, float | None] = {}
    for index, concept in enumerate(concepts):
        with frozen(model):
            model.requires_grad_(True)
            try:
                trainer = _run_trainer(target, concept_dataset(target, data, concept.concept_id),
                                       _concept_config(config, concept.concept_id))
                files[concept.concept_id] = _save_trained(model, weights_root, concept.concept_id)
            finally:
                _restore(model, originals)
        losses[str(concept.concept_id)] = _final_loss(trainer)
        _free(trainer)
        logger.info("SFT concept %d (%d/%d): train loss %s", concept.concept_id, index + 1, len(concepts),
                    losses[str(concept.concept_id)])
    return FinetunedConcepts(concepts=list(concepts), weight_files=files, base_model=target.model_id, method=method,
                             base_model_revision=target.revision, config=_training_record(config, None, losses))


def _save_trained(model: torch.nn.Module, root: Path, concept_id: int) -> Path:
    """Every trained tensor of `model` (tied weights once, by their `named_parameters` name) as safetensors."""
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}
    path = concept_weights_path(root, concept_id)
    if not is_main():
        return path  # under a distributed launcher DDP kept the weights equal on every process; rank 0 writes them
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "axbench-finetuned-concepts", "concept_id": str(concept_id)})
    return path


def _restore(model: torch.nn.Module, originals: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(originals[name])
