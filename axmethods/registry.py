"""The one method registry: every method by name (and by AxBench's class name) → a typed `MethodSpec`.

`axbench train`, `axbench run` and the Python API all go through it:

    >>> from axmethods.registry import METHODS, get_method
    >>> get_method("LsReFT").name, get_method("LsReFT").training
    ('reft-r1', 'gradient')
    >>> sorted(name for name, spec in METHODS.items() if spec.result == "adapters")
    ['lang-lora', 'lang-loreft', 'lora', 'loreft', 'reps-lora', 'reps-loreft']

A spec says what a method detects / steers, how it trains, what its result is, its settings class (the paper's
settings are its defaults, plus the spec's `preset`) and how to train it (`spec.train(...)`). This module imports
neither torch nor transformers: implementations load when a method is used, so `axbench --help` stays fast.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from axdata.settings import SettingsError, build_settings, renamed_settings
from axmethods.factors import ADAPTER_TRAIN_FACTORS, VECTOR_STEER_FACTORS, VECTOR_TRAIN_FACTORS

if TYPE_CHECKING:
    import pandas as pd

    from axdata.concepts import Concept
    from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

# activations: closed form over frozen layer-L activations; gradient: rank-1 parameters trained on the Trainer;
# preference / lm: the RePS family on the Trainer (preference pairs, or the LM loss on concept responses);
# sft: TRL's SFTTrainer per concept; text: a classifier over the texts; llm: an LLM writes prompts / ratings;
# lookup: a feature of a pretrained SAE is looked up, nothing is trained; hypernet: one network for all concepts
# (HyperSteer) that writes each concept's vector.
Training = Literal["activations", "gradient", "preference", "lm", "sft", "text", "llm", "lookup", "hypernet"]
# The result class (`axmethods.results`): SteeringDictionary, ConceptAdapters, FinetunedConcepts, BagOfWords,
# SteeringPrompts, RelevanceRater, HyperSteerResult, AttributionDetector (IG / IxG: a dictionary's layer folder that
# detects by attribution and never steers).
Result = Literal["dictionary", "adapters", "finetuned", "bag-of-words", "steering-prompts", "relevance-rater",
                 "hypernetwork", "attribution"]

_ADAPTER_LAYOUT = {"low_rank_dimension": 4, "subtraction_type": "negate", "intervention_dropout": 0.1}


@dataclass(frozen=True)
class MethodSpec:
    """One method: what it does, how it trains, and the code that does it (`module:attribute`, loaded lazily)."""

    name: str
    summary: str
    training: Training
    detects: bool
    steers: bool
    implementation: str
    result: Result = "dictionary"
    preset: Mapping[str, Any] = field(default_factory=dict)
    axbench_name: str | None = None

    @property
    def in_layer_folder(self) -> bool:
        """Saved in a dictionary's `l<layer>/` folder (the others keep their config at the result's root)."""
        return self.result in ("dictionary", "attribution")

    @property
    def family(self) -> bool:
        """Trained by the steering family's trainers (RePS / BiPO / Lang. / LoReFT / LoRA / SFT)."""
        return self.training in ("preference", "lm", "sft")

    def load(self) -> Any:
        """The implementation: a `Method` subclass, or the family's settings class."""
        module, _, attribute = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attribute)

    @property
    def settings_class(self) -> type:
        return self.load() if self.family or self.training == "hypernet" else self.load().config_class

    def settings(self, values: Mapping[str, Any] | None = None, *, layer: int | None = None,
                 where: str | None = None) -> Any:
        """The method's settings: its class defaults, the preset, then `values` (texts read as YAML)."""
        preset = {key: list(value) if isinstance(value, list) else value for key, value in self.preset.items()}
        fixed = {"layer": layer} if self.training in ("preference", "lm", "hypernet") and layer is not None else {}
        values = renamed_settings(self.settings_class, values or {}, where or self.name)  # old names, before the preset
        return build_settings(self.settings_class, {**preset, **values}, where=where or self.name, **fixed)

    def train(self, target: TargetModel, read_split: Callable[[str], pd.DataFrame | None],
              concepts: Sequence[Concept], layer: int, settings: Any = None, *, backend: Any = None,
              collector: Any = None, notify: Callable[[str], None] | None = None) -> Any:
        """Train on the splits `read_split(name)` gives (None where absent) → the method's result.

        `backend` answers the LLM calls of LLM-written prompts (default: the target model itself); `collector`
        shares cached activations between activation methods of one run.
        """
        settings = settings if settings is not None else self.settings(layer=layer)
        if self.family:
            from axmethods.trainers.family import train_family_method, training_frame

            frame = training_frame(self, target, concepts, read_split, settings, notify=notify)
            return train_family_method(self, target, frame, concepts, settings, progress=notify)
        if self.training == "hypernet":
            from axmethods.trainers.hypersteer import train_hypersteer

            return train_hypersteer(target, read_split, concepts, settings, method_name=self.name, progress=notify)
        train = read_split("train")
        if train is None:
            raise FileNotFoundError(f"{self.name} trains on the train split, and the dataset has none.")
        kwargs: dict[str, Any] = {}
        if self.training == "llm" and self.steers and getattr(settings, "llm_prompts", False):
            if backend is None:  # without a configured LLM, the target model writes its steering instructions
                from axmethods.chat_backend import TransformersChatBackend

                backend = TransformersChatBackend(target)
            kwargs["backend"] = backend
        method = self.load()(settings, **kwargs)
        fit_kwargs = {"collector": collector} if collector is not None and self.training == "activations" else {}
        if self.training == "activations" and self.name not in _ONE_RANDOM_STREAM:
            from axmethods.distributed import world_size

            if world_size() > 1:
                return _fit_split(method, target, train, concepts, layer, fit_kwargs)
        return method.fit(target, train, concepts, layer, **fit_kwargs)


# LAT draws the token pairs of every chunk from one generator, so a chunk's pairs depend on the chunks before it:
# splitting its chunks across processes would change them. Under a launcher every process fits it whole (exact).
_ONE_RANDOM_STREAM = frozenset({"lat"})


def _fit_split(method: Any, target: TargetModel, train: pd.DataFrame, concepts: Sequence[Concept], layer: int,
               fit_kwargs: dict[str, Any]) -> Any:
    """A closed-form method under a distributed launcher: each process fits every N-th chunk of concepts and every
    process gets the whole dictionary (concepts are independent; chunks of at most `concepts_per_chunk`, fewer when
    that keeps every process busy)."""
    import torch

    from axmethods.distributed import gather, shard, unshard, world_size

    size = max(1, min(method.config.concepts_per_chunk, -(-len(concepts) // world_size())))
    chunks = [list(concepts[start:start + size]) for start in range(0, len(concepts), size)]
    fitted = [method.fit(target, train, chunk, layer, **fit_kwargs) for chunk in shard(chunks)]
    if any(part.bias is not None or part.steering_weight is not None for part in fitted):
        raise NotImplementedError(f"{method.name} fits a bias or steering weight; only weight-only closed-form "
                                  "methods are split across processes.")
    weights = unshard(gather([part.weight.cpu() for part in fitted]))
    return method.dictionary(target, concepts, layer, torch.cat(weights))


def _method(name: str, cls: str, summary: str, training: Training, *, detects: bool = True, steers: bool = True,
            axbench: str | None, result: Result = "dictionary") -> MethodSpec:
    return MethodSpec(name, summary, training, detects, steers, f"axmethods.methods.{cls}", result,
                      axbench_name=axbench)


def _family(name: str, summary: str, training: Training, preset: Mapping[str, Any], *,
            result: Result = "dictionary") -> MethodSpec:
    settings = "axmethods.trainers.sft:SFTSteeringConfig" if training == "sft" else \
        "axmethods.trainers.config:RePSConfig"
    return MethodSpec(name, summary, training, result == "dictionary", True, settings, result, preset)


_ADAPTER_FACTORS = {"training_factors": ADAPTER_TRAIN_FACTORS, "inference_factors": ADAPTER_TRAIN_FACTORS}

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    _method("diffmean", "diffmean:DiffMean", "mean positive token minus mean negative token", "activations",
            axbench="DiffMean"),
    _method("pca", "pca:PCA", "first principal component of the positive tokens", "activations", axbench="PCA"),
    _method("lat", "lat:LAT", "first PC of differences of random token pairs", "activations", axbench="LAT"),
    _method("probe", "probe:Probe", "per-token logistic regression", "gradient", axbench="LinearProbe"),
    _method("ig", "ig:IntegratedGradients", "integrated gradients (10 path steps) of a linear head on the last "
            "token's final state w.r.t. the layer-L residuals; max token score", "gradient", steers=False,
            axbench="IntegratedGradients", result="attribution"),
    _method("ixg", "ig:InputXGradients", "|input x gradient| of the IG head w.r.t. the layer-L residuals; max token "
            "score", "gradient", steers=False, axbench="InputXGradients", result="attribution"),
    _method("reft-r1", "reft_r1:ReFTr1", "the paper's rank-1 ReFT: top-k ReLU latent + L1, LM loss", "gradient",
            axbench="LsReFT"),
    _method("ssv", "ssv:SSV", "supervised steering vector, LM loss on positives", "gradient",
            axbench="SteeringVector"),
    _method("sae", "sae:SAE", "a GemmaScope / SAELens SAE feature per concept", "lookup", axbench="GemmaScopeSAE"),
    _method("sae-filtered", "sae:SAEFiltered", "SAE, steering only concepts whose feature has output score >= 0.01 "
            "(Arad et al. 2025)", "lookup", axbench=None),
    _method("sae-a", "sae:SAEA", "the SAE feature of best AUROC on the train split", "lookup",
            axbench="GemmaScopeSAEMaxAUC"),
    _method("bow", "bow:BoW", "bag-of-words logistic regression over the texts", "text", steers=False,
            axbench="BoW", result="bag-of-words"),
    _method("prompt-steering", "prompt:PromptSteering", "an LLM-written instruction prepended to the prompt", "llm",
            detects=False, axbench="PromptSteering", result="steering-prompts"),
    _method("prompt-detection", "prompt:PromptDetection", "the target model rates how much a text shows the concept",
            "llm", steers=False, axbench="PromptDetection", result="relevance-rater"),
    MethodSpec("hypersteer", "HyperSteer: one hypernetwork (concept text, prompt) -> steering vector for any "
               "concept, LM loss (objective: reps for RePS's); lr 8e-5, batch 12, factors 0.0..1.8", "hypernet",
               detects=False, steers=True, implementation="axmethods.trainers.hypersteer:HyperSteerConfig",
               result="hypernetwork", axbench_name="HyperSteer"),
    _family("reps", "RePS vector: scaled SimPO over orig_add / orig_sub pairs (2B: lr 0.04, batch 6, "
            "18 epochs, factors 2..20)", "preference", {}),
    _family("reps-lora", "RePS with a LoRA on o_proj (rank 4, 6 epochs, factors 0.2..2.0, -factor subtraction)",
            "preference", {"parameterisation": "lora", "num_train_epochs": 6.0, "learning_rate": 0.08,
                           **_ADAPTER_FACTORS, **_ADAPTER_LAYOUT}, result="adapters"),
    _family("reps-loreft", "RePS with LoReFT on the prompt tokens (rank 4, 18 epochs, factors 0.2..2.0)",
            "preference", {"parameterisation": "loreft", "intervention_positions": "prompt",
                           "per_device_train_batch_size": 3, "gradient_accumulation_steps": 4,
                           **_ADAPTER_FACTORS, **_ADAPTER_LAYOUT}, result="adapters"),
    _family("bipo", "BiPO: DPO (beta 1) against the unsteered model, factor 1, -factor subtraction", "preference",
            {"loss_type": "dpo", "beta": 1.0, "training_factors": [1.0], "subtraction_type": "negate",
             "train_bias": False}),
    _family("lang-vector", "\"Lang.\" vector: LM loss on the concept response under a sampled factor "
            "(batch 6 x 2, 6 epochs, factors 2..20)", "lm",
            {"loss_type": "lm", "num_train_epochs": 6.0, "gradient_accumulation_steps": 2,
             "training_factors": VECTOR_TRAIN_FACTORS, "inference_factors": VECTOR_STEER_FACTORS}),
    _family("lang-lora", "\"Lang.\" LoRA: LM loss on the concept response, factors 0.2..2.0", "lm",
            {"loss_type": "lm", "parameterisation": "lora", "num_train_epochs": 6.0, "learning_rate": 0.08,
             **_ADAPTER_FACTORS, **_ADAPTER_LAYOUT}, result="adapters"),
    _family("lang-loreft", "\"Lang.\" LoReFT: LM loss on the concept response, prompt tokens, factors 0.2..2.0",
            "lm", {"loss_type": "lm", "parameterisation": "loreft", "intervention_positions": "prompt",
                   "num_train_epochs": 6.0, **_ADAPTER_FACTORS, **_ADAPTER_LAYOUT}, result="adapters"),
    _family("loreft", "AxBench's LoReFT baseline: LM loss on positives, prompt tokens, rank 4, factor 1 "
            "(batch 18 x 2, 24 epochs, lr 9e-4)", "lm",
            {"loss_type": "lm", "parameterisation": "loreft", "intervention_positions": "prompt",
             "per_device_train_batch_size": 18, "gradient_accumulation_steps": 2, "num_train_epochs": 24.0,
             "learning_rate": 9e-4, "training_factors": [1.0], "inference_factors": [1.0],
             "low_rank_dimension": 4, "subtraction_type": "negate"}, result="adapters"),
    _family("lora", "AxBench's LoRA baseline: LoRA-SFT per concept (r 4, alpha 32, rsLoRA, o_proj, 24 epochs, "
            "lr 9e-4)", "sft", {"peft": True, "per_device_train_batch_size": 18, "gradient_accumulation_steps": 2,
                                "num_train_epochs": 24.0, "learning_rate": 9e-4}, result="adapters"),
    _family("sft", "full fine-tuning per concept on its positives (8 epochs, lr 4e-5; the paper ran 20 concepts)",
            "sft", {"peft": False, "per_device_train_batch_size": 18, "gradient_accumulation_steps": 4,
                    "num_train_epochs": 8.0, "learning_rate": 4e-5}, result="finetuned"),
)}

_AXBENCH_NAMES = {spec.axbench_name.lower(): spec.name for spec in METHODS.values() if spec.axbench_name}


class UnknownMethodError(SettingsError, KeyError):
    """No method has this name; the message lists the names there are."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_method(name: str) -> MethodSpec:
    """The spec of method `name`: ours ("reft-r1") or AxBench's class name ("LsReFT"); case-insensitive."""
    key = name.strip().lower().replace("_", "-")
    key = _AXBENCH_NAMES.get(key.replace("-", ""), key)
    if key not in METHODS:
        raise UnknownMethodError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)} (AxBench's class "
                                 f"names work too: {', '.join(sorted(s.axbench_name for s in METHODS.values() if s.axbench_name))}).")
    return METHODS[key]


def settings_help(spec: MethodSpec) -> list[str]:
    """`axbench train METHOD --list-settings`: each setting with its default (preset applied) and help."""
    import dataclasses

    defaults = spec.settings()
    settings_class = spec.settings_class
    lines = [f"{spec.name}: {spec.summary}", f"settings ({settings_class.__name__}; --set key=value, YAML values):"]
    trainer_args = any(cls.__name__ == "TrainingArguments" for cls in settings_class.__mro__)
    own = set(getattr(settings_class, "__annotations__", {})) | set(spec.preset)
    for item in dataclasses.fields(settings_class):
        if trainer_args and item.name not in own:
            continue  # ~120 TrainingArguments fields are plumbing; listed once below
        lines.append(f"  {item.name} = {getattr(defaults, item.name)!r}: {item.metadata.get('help', '')}")
    if trainer_args:
        lines.append("  … and every transformers TrainingArguments field (same names and meanings).")
    return lines
