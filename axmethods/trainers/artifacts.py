"""What the steering trainers produce, and how it steers.

- vector → a `SteeringDictionary` (so detection and steering inference use it like any other dictionary),
  with calibration fixed to 1: RePS-family vectors steer with the raw factor (spec §3.13), and the
  dictionary's config carries the method's own factor grid (`steering_factors`).
- LoRA / LoReFT → `ConceptAdapters`: every concept's low-rank parameters in one safetensors file, applied
  row-wise by `AdapterSteerer` (a batch may mix concepts and factors). LoRA adapters are also exported per
  concept in peft's own format (`peft/concept_<id>/`), loadable with `peft.PeftModel.from_pretrained`.

Layout of a `ConceptAdapters` folder (and Hub model repo):

    adapters.safetensors   the intervention's tensors, concept axis first
    config.json            format, method, base model, parameterisation spec, training config, factor grid
    concepts.jsonl         AxBench metadata.jsonl lines; line i = concept index i
    README.md              model card (hub_cards/adapter_card.md)
    peft/concept_<id>/     LoRA only: adapter_config.json + adapter_model.safetensors
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from axdata.cards import render_card
from axdata.concepts import Concept, load_concepts, write_concepts_jsonl
from axdata.hashing import content_hash
from axdata.io import atomic_path, atomic_write_json
from axmethods.contract import CONFIG_FILE, ConceptResult, card_metadata, read_folder_config
from axmethods.dictionary import DictionaryError, SteeringDictionary
from axmethods.models import TargetModel
from axmethods.trainers.parameterisations import (
    ConceptIntervention,
    LoRAIntervention,
    RowPlan,
    VectorIntervention,
    build_intervention,
    load_values,
)

if TYPE_CHECKING:
    from axmethods.trainers.config import RePSConfig

logger = logging.getLogger(__name__)

ADAPTERS_FORMAT = "axbench-concept-adapters"
ADAPTERS_FILE, CONCEPTS_FILE, CARD_FILE = "adapters.safetensors", "concepts.jsonl", "README.md"
# The training settings worth recording with a result (TrainingArguments has ~120 fields, mostly plumbing).
RECORDED_FIELDS = (
    "parameterisation", "loss_type", "preference_pairs", "training_factors", "subtraction_type", "simpo_scaler",
    "beta", "layer", "intervention_layers", "low_rank_dimension", "lora_alpha", "lora_target_module",
    "intervention_dropout", "intervention_positions", "init_std", "train_bias", "max_prompt_length",
    "max_response_length", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "max_steps", "lr_scheduler_type", "weight_decay", "max_grad_norm", "seed",
)


def training_record(args: RePSConfig, trainer: Any | None) -> dict[str, Any]:
    # `steering_factors` of a result is its inference grid (what steerers read); the training draws are
    # `training_factors`.
    record = {name: getattr(args, name) for name in RECORDED_FIELDS}
    if trainer is not None:
        record.update(trainer=type(trainer).__name__, trainer_name=trainer._name, paper=trainer._paper.get("title"),
                      paper_id=trainer._paper.get("id"), tags=list(trainer._tag_names),
                      training_summary=trainer.training_summary())  # ObjectiveTrainer's, as every trainer's
    return record


def export_intervention(intervention: ConceptIntervention, target: TargetModel, concepts: Sequence[Concept],
                        args: RePSConfig, *, method: str, trainer: Any | None = None
                        ) -> SteeringDictionary | ConceptAdapters:
    record = training_record(args, trainer)
    factors = [float(f) for f in args.inference_factors]
    if isinstance(intervention, VectorIntervention):
        layer = intervention.layers[0]
        weight = intervention.weight.detach().float().cpu().clone()
        config = {**record, "steering_factors": factors, "calibration": "fixed"}
        return SteeringDictionary(
            weight=weight, concepts=list(concepts), layer=layer, hook_module=target.residual_module_path(layer),
            base_model=target.model_id, method=method, base_model_revision=target.revision, config=config,
            activation="relu", calibration=torch.ones(len(concepts)),
            calibration_info={"source": "fixed", "value": 1.0,
                              "reason": f"{method} steers with the raw factor (α = factor; RePS, spec §3.13)"})
    return ConceptAdapters(intervention=intervention, concepts=list(concepts), base_model=target.model_id,
                           base_model_revision=target.revision, method=method,
                           config={**record, "steering_factors": factors})


@dataclass
class ConceptAdapters(ConceptResult):
    """LoRA / LoReFT parameters of many concepts, with the facts needed to steer with them."""

    FORMAT: ClassVar[str] = ADAPTERS_FORMAT
    KIND: ClassVar[str] = "adapters"
    steers: ClassVar[bool] = True

    intervention: ConceptIntervention
    concepts: list[Concept]
    base_model: str
    method: str
    base_model_revision: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.concepts) != self.intervention.n_concepts:
            raise DictionaryError(f"{len(self.concepts)} concepts but the {self.method} adapters hold "
                                  f"{self.intervention.n_concepts}; they must match one to one.")

    @property
    def parameterisation(self) -> str:
        return self.intervention.parameterisation

    @property
    def config_hash(self) -> str:
        return content_hash({"spec": self.intervention.spec(), "config": self.config})

    def steer(self, target: TargetModel, concept_ids: Sequence[int], factors: Sequence[float]
              ) -> AbstractContextManager[RowPlan]:
        """Row b of every batch run inside the block gets concept `concept_ids[b]`'s adapter scaled by `factors[b]`."""
        self.check_model(target)
        self.intervention.to(target.device).eval()
        plan = RowPlan(self.rows(concept_ids).to(target.device), torch.as_tensor(factors, dtype=torch.float32,
                                                                                  device=target.device))
        return self.intervention.applied(target, plan,
                                         prefill_only=self.config.get("intervention_positions") == "prompt")

    def steerer(self, *, kind: str = "addition", positions: str = "all") -> AdapterSteerer:
        return AdapterSteerer(self)

    def write_files(self, root: Path) -> Path:
        """The folder's files, atomically one by one; LoRA adapters are also exported for peft (`peft/`)."""
        tensors = {k: v.contiguous() for k, v in self.intervention.concept_parameters().items()}
        with atomic_path(root / ADAPTERS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": ADAPTERS_FORMAT, "method": self.method})
        write_concepts_jsonl(root / CONCEPTS_FILE, self.concepts)
        atomic_write_json(root / CONFIG_FILE, {
            "format": ADAPTERS_FORMAT, "format_version": 1, "method": self.method, "base_model": self.base_model,
            "base_model_revision": self.base_model_revision, "intervention": self.intervention.spec(),
            "config": self.config, "config_hash": self.config_hash})
        if isinstance(self.intervention, LoRAIntervention) and self.intervention.module_paths:
            export_peft(self, root / "peft")
        return root

    @classmethod
    def load(cls, directory: str | Path) -> ConceptAdapters:
        root = Path(directory)
        record = read_folder_config(root, ADAPTERS_FORMAT, "ConceptAdapters.save_pretrained (axbench train "
                                                          "reps-lora, lang-loreft, lora, ...)")
        intervention = build_intervention(record["intervention"])
        try:
            load_values(intervention, load_file(str(root / ADAPTERS_FILE)))
        except (RuntimeError, KeyError, OSError) as error:
            raise DictionaryError(f"{root / ADAPTERS_FILE} does not match {CONFIG_FILE}'s intervention spec "
                                  f"({error}); the folder is damaged: re-export it.") from None
        return cls(intervention=intervention, concepts=load_concepts(root / CONCEPTS_FILE),
                   base_model=record["base_model"], method=record["method"],
                   base_model_revision=record.get("base_model_revision"), config=record.get("config", {}))

    def model_card(self, *, datasets: Sequence[str] = (), eval_results: Sequence[Mapping[str, Any]] = (),
                   repo_id: str | None = None) -> str:
        metadata = card_metadata(self, datasets, eval_results, repo_id,
                                 tags=[self.parameterisation, *self.config.get("tags", [])])
        return render_card("adapter_card.md", metadata=metadata, adapters=self, repo_id=repo_id or "DIR_OR_REPO",
                           datasets=list(datasets), examples=self.concepts[:10], spec=self.intervention.spec())


@dataclass
class AdapterSteerer:
    """Steering inference with `ConceptAdapters` (the `Steerer` protocol of `axmethods.contract`)."""

    adapters: ConceptAdapters
    factor_free: bool = False

    @property
    def method(self) -> str:
        return self.adapters.method

    @property
    def factors(self) -> list[float]:
        return self.adapters.steering_factors

    def provenance(self) -> dict[str, Any]:
        return {"adapters_config_hash": self.adapters.config_hash, "parameterisation": self.adapters.parameterisation,
                "layers": self.adapters.intervention.layers}

    def instructions(self, prompts: pd.DataFrame) -> list[str]:
        return prompts["original_prompt"].tolist()

    def intervene(self, target: TargetModel, rows: pd.DataFrame) -> tuple[AbstractContextManager[Any], np.ndarray]:
        factors = rows["factor"].astype(float).fillna(1.0).tolist()
        return self.adapters.steer(target, rows["concept_id"].tolist(), factors), np.asarray(factors, dtype=float)


def export_peft(adapters: ConceptAdapters, out: Path) -> list[Path]:
    """Each concept's LoRA as a peft adapter folder (factor 1), loadable with `PeftModel.from_pretrained`.

    Written directly in peft's saved format (adapter_config.json + adapter_model.safetensors keyed
    `base_model.model.<module>.lora_{A,B}.weight`): no model is needed to export.
    """
    from peft import LoraConfig

    intervention = adapters.intervention
    if not isinstance(intervention, LoRAIntervention):
        raise DictionaryError(f"only LoRA adapters export to peft; these are {adapters.parameterisation}.")
    if not intervention.module_paths:
        raise DictionaryError("these LoRA adapters do not record their modules' names in the model; re-train them "
                              "with this version to export to peft.")
    config = LoraConfig(r=intervention.rank, lora_alpha=intervention.alpha, use_rslora=intervention.rslora,
                        lora_dropout=intervention.dropout, target_modules=[intervention.target_module.rsplit(".")[-1]],
                        layers_to_transform=intervention.layers, bias="none", task_type="CAUSAL_LM",
                        base_model_name_or_path=adapters.base_model, revision=adapters.base_model_revision)
    values = intervention.concept_parameters()
    written = []
    for index, concept in enumerate(adapters.concepts):
        folder = out / f"concept_{concept.concept_id}"
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for site, path in enumerate(intervention.module_paths):
            tensors[f"base_model.model.{path}.lora_A.weight"] = values["lora_A"][index, site].contiguous()
            tensors[f"base_model.model.{path}.lora_B.weight"] = values["lora_B"][index, site].contiguous()
        with atomic_path(folder / "adapter_model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        config.save_pretrained(str(folder))
        written.append(folder)
    return written
