"""The trained steering methods by name: RePS and its baselines as presets of `RePSConfig`, plus SFT ones.

`method.config(overrides, layer=L)`, `training_frame(...)` and `train_steering_method(...)` are what
`axbench train NAME` and the pipeline's train stage call. Presets follow the paper's 2B settings (spec §3.12–3.13); any field can be
overridden (`--set learning_rate=0.01`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from transformers import HfArgumentParser

from axdata.concepts import Concept
from axdata.validation import check_numbers
from axmethods.dictionary import SteeringDictionary
from axmethods.models import TargetModel
from axmethods.trainers.artifacts import ConceptAdapters
from axmethods.trainers.config import (
    ADAPTER_TRAIN_FACTORS,
    VECTOR_STEER_FACTORS,
    VECTOR_TRAIN_FACTORS,
    RePSConfig,
)

logger = logging.getLogger(__name__)

_ADAPTER_LAYOUT = {"low_rank_dimension": 4, "subtraction_type": "negate", "intervention_dropout": 0.1}


@dataclass(frozen=True)
class TrainedMethod:
    """A named steering method trained with gradient steps on (preference) responses."""

    name: str
    description: str
    preset: Mapping[str, Any] = field(default_factory=dict)
    trainer: str = "reps"  # reps | sft

    @property
    def produces_adapters(self) -> bool:
        return self.trainer == "sft" or self.preset.get("parameterisation", "vector") != "vector"

    @property
    def config_class(self) -> type:
        if self.trainer == "sft":  # imports TRL: only when an SFT method is used
            from axmethods.trainers.sft import SFTSteeringConfig

            return SFTSteeringConfig
        return RePSConfig

    def config(self, overrides: Mapping[str, Any] | None = None, *, layer: int | None = None) -> Any:
        """The method's config: preset, then `overrides` (strings parsed by type), then `layer` (RePS family)."""
        fixed = {"layer": layer} if self.trainer == "reps" and layer is not None else {}
        return parse_training_config(self.config_class, {**self.preset, **(overrides or {})}, **fixed)


TRAINED_METHODS: dict[str, TrainedMethod] = {m.name: m for m in (
    TrainedMethod("reps", "RePS rank-1 steering vector: scaled SimPO over orig_add / orig_sub pairs (paper 2B: "
                  "lr 0.04, batch 6, 18 epochs, factors 2..20)."),
    TrainedMethod("reps-lora", "RePS with a LoRA on o_proj (rank 4, layers [5,10,15,20]-equivalent, 6 epochs, "
                  "factors 0.2..2.0, −factor subtraction).",
                  {"parameterisation": "lora", "num_train_epochs": 6.0, "learning_rate": 0.08,
                   "steering_factors": ADAPTER_TRAIN_FACTORS, "inference_factors": ADAPTER_TRAIN_FACTORS,
                   **_ADAPTER_LAYOUT}),
    TrainedMethod("reps-loreft", "RePS with LoReFT on the prompt tokens (rank 4, 18 epochs, factors 0.2..2.0, "
                  "−factor subtraction).",
                  {"parameterisation": "loreft", "intervention_positions": "prompt",
                   "per_device_train_batch_size": 3, "gradient_accumulation_steps": 4,
                   "steering_factors": ADAPTER_TRAIN_FACTORS, "inference_factors": ADAPTER_TRAIN_FACTORS,
                   **_ADAPTER_LAYOUT}),
    TrainedMethod("bipo", "BiPO: DPO (β = 1) against the unsteered model, factor 1, −factor subtraction.",
                  {"loss_type": "dpo", "beta": 1.0, "steering_factors": [1.0], "subtraction_type": "negate",
                   "train_bias": False}),
    TrainedMethod("lang-vector", "\"Lang.\" vector: LM loss on the concept response under a sampled factor "
                  "(batch 6 × 2, 6 epochs, lr 0.04, factors 2..20).",
                  {"loss_type": "lm", "num_train_epochs": 6.0, "gradient_accumulation_steps": 2,
                   "steering_factors": VECTOR_TRAIN_FACTORS, "inference_factors": VECTOR_STEER_FACTORS}),
    TrainedMethod("lang-lora", "\"Lang.\" LoRA: LM loss on the concept response, factors 0.2..2.0.",
                  {"loss_type": "lm", "parameterisation": "lora", "num_train_epochs": 6.0, "learning_rate": 0.08,
                   "steering_factors": ADAPTER_TRAIN_FACTORS, "inference_factors": ADAPTER_TRAIN_FACTORS,
                   **_ADAPTER_LAYOUT}),
    TrainedMethod("lang-loreft", "\"Lang.\" LoReFT: LM loss on the concept response, prompt tokens, "
                  "factors 0.2..2.0.",
                  {"loss_type": "lm", "parameterisation": "loreft", "intervention_positions": "prompt",
                   "num_train_epochs": 6.0, "steering_factors": ADAPTER_TRAIN_FACTORS,
                   "inference_factors": ADAPTER_TRAIN_FACTORS, **_ADAPTER_LAYOUT}),
    TrainedMethod("loreft", "AxBench's LoReFT baseline (§3.12): LM loss on positives, prompt tokens, rank 4, "
                  "factor fixed at 1 (batch 18 × 2, 24 epochs, lr 9e-4).",
                  {"loss_type": "lm", "parameterisation": "loreft", "intervention_positions": "prompt",
                   "per_device_train_batch_size": 18, "gradient_accumulation_steps": 2, "num_train_epochs": 24.0,
                   "learning_rate": 9e-4, "steering_factors": [1.0], "inference_factors": [1.0],
                   "low_rank_dimension": 4, "subtraction_type": "negate"}),
    TrainedMethod("lora", "AxBench's LoRA baseline (§3.12) as LoRA-SFT per concept with TRL's SFTTrainer + peft "
                  "(r 4, alpha 32, rsLoRA, o_proj, 24 epochs, lr 9e-4).",
                  {"peft": True, "per_device_train_batch_size": 18, "gradient_accumulation_steps": 2,
                   "num_train_epochs": 24.0, "learning_rate": 9e-4}, trainer="sft"),
    TrainedMethod("sft", "Full fine-tuning per concept with TRL's SFTTrainer on its positives (8 epochs, lr 4e-5; "
                  "the paper ran it on 20 concepts).",
                  {"peft": False, "per_device_train_batch_size": 18, "gradient_accumulation_steps": 4,
                   "num_train_epochs": 8.0, "learning_rate": 4e-5}, trainer="sft"),
)}


def get_trained_method(name: str) -> TrainedMethod:
    key = name.strip().lower().replace("_", "-")
    if key not in TRAINED_METHODS:
        raise KeyError(f"Unknown trained steering method {name!r}; choose one of {', '.join(TRAINED_METHODS)}.")
    return TRAINED_METHODS[key]


def is_trained_method(name: str) -> bool:
    return name.strip().lower().replace("_", "-") in TRAINED_METHODS


def parse_training_config(config_class: type, values: Mapping[str, Any], **fixed: Any) -> Any:
    """A TrainingArguments-style config from field → value (strings parsed by type, lists as a,b,c)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field(s) {unknown}; see `axbench train METHOD --set help=1`.")
    args: list[str] = []
    typed: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, str):
            args += [f"--{key}", *(value.split(",") if _is_list_field(config_class, key) else [value])]
        else:
            typed[key] = value
    try:
        (parsed,) = HfArgumentParser(config_class).parse_args_into_dataclasses(args=args)
    except SystemExit:
        raise ValueError(f"Cannot parse {args} as {config_class.__name__} fields; check each value's type "
                         "(lists: a,b,c).") from None
    # Re-run the dataclass checks with the typed values in place.
    result = dataclasses.replace(parsed, **typed, **fixed) if typed or fixed else parsed
    # Only the values given are range-checked: TrainingArguments keeps sentinels such as max_steps=-1.
    check_numbers({key: getattr(result, key) for key in values}, config_class.__name__)
    return result


def _is_list_field(config_class: type, name: str) -> bool:
    for item in dataclasses.fields(config_class):
        if item.name == name:
            return "list" in str(item.type)
    return False


def training_frame(name: str, target: TargetModel, concepts: Sequence[Concept],
                   read_split: Callable[[str], pd.DataFrame | None], config: Any, *,
                   notify: Callable[[str], None] | None = None) -> pd.DataFrame:
    """What method `name` (with its `config`) trains on. `read_split(split)` gives a split, or None if absent.

    SFT methods: the train split. RePS-family methods: the preference split; without one, the train positives
    (LM objective: they are all it needs) or pairs of each positive with the target model's greedy answer.
    """
    from axmethods.trainers.data import positives_frame, preference_frame

    method = get_trained_method(name)
    train = read_split("train")
    if method.trainer == "sft":
        if train is None:
            raise FileNotFoundError(f"{method.name} trains on the train split, and the dataset has none.")
        return train
    preference = read_split("preference")
    if preference is not None:
        return preference
    if train is None:
        raise FileNotFoundError(f"{method.name} trains on the preference split (or the train split's positives), "
                                "and the dataset has neither.")
    if config.loss_type == "lm":
        return positives_frame(train, concepts)
    (notify or logger.info)(f"{method.name}: the dataset has no preference split; pairing each train positive "
                            f"with {target.model_id}'s greedy answer")
    return preference_frame(target, train, concepts)


def train_steering_method(name: str, target: TargetModel, data: pd.DataFrame, concepts: Sequence[Concept],
                          config: Any, *, progress: Callable[[str], None] | None = None
                          ) -> SteeringDictionary | ConceptAdapters:
    """Train method `name` with `config` (`method.config(...)`) on `data` (`training_frame`).

    Concepts beyond `concepts_per_chunk` are trained chunk by chunk and their results joined.
    """
    method = get_trained_method(name)
    if method.trainer == "sft":
        from axmethods.trainers.sft import train_sft

        return train_sft(target, data, concepts, config, method=method.name)
    from axmethods.trainers.reps_trainer import RePSTrainer

    results = []
    size = config.concepts_per_chunk
    for start in range(0, len(concepts), size):
        chunk = list(concepts)[start:start + size]
        trainer = RePSTrainer(model=target, args=config, train_dataset=data, concepts=chunk, method_name=method.name)
        trainer.train()
        results.append(trainer.export())
        if progress:
            progress(f"{method.name}: trained concepts {start + 1}–{start + len(chunk)} of {len(concepts)}")
    return results[0] if len(results) == 1 else join_results(results)


def join_results(results: Sequence[SteeringDictionary | ConceptAdapters]) -> SteeringDictionary | ConceptAdapters:
    """One result from the per-chunk results of one method (same layer / parameterisation)."""
    import torch

    first = results[0]
    concepts = [c for r in results for c in r.concepts]
    if isinstance(first, SteeringDictionary):
        return dataclasses.replace(first, weight=torch.cat([r.weight for r in results]), concepts=concepts,
                                   calibration=torch.ones(len(concepts)))
    from axmethods.trainers.parameterisations import build_intervention, load_values

    spec = {**first.intervention.spec(), "n_concepts": len(concepts)}
    values = {key: torch.cat([r.intervention.concept_parameters()[key] for r in results])
              for key in first.intervention.concept_parameters()}
    return dataclasses.replace(first, intervention=load_values(build_intervention(spec), values), concepts=concepts)


def canonical_method_name(name: str) -> str:
    """The registry name of any method: a detection/steering method (`axmethods.methods`) or a trained one here."""
    from axmethods.methods import get_method

    if is_trained_method(name):
        return get_trained_method(name).name
    try:
        return get_method(name).name
    except KeyError as error:
        raise KeyError(f"{error.args[0]} Trained steering methods: {', '.join(TRAINED_METHODS)}.") from None


def setting_names(name: str) -> set[str]:
    """The fields `methods.settings.<name>` may set: the method's config dataclass fields."""
    if is_trained_method(name):
        config_class = get_trained_method(name).config_class
    else:
        from axmethods.methods import get_method

        config_class = get_method(name).config_class
    return {f.name for f in dataclasses.fields(config_class)}
