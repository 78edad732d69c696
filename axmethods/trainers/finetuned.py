"""Full fine-tuning results: one set of changed weights per concept, swapped into the target model to steer.

AxBench's SFT baseline (spec §3.12) fine-tunes the whole model on each concept's positives and keeps one
checkpoint per concept. Here each concept keeps only its trainable tensors (safetensors, in the model's
dtype), and steering swaps them into the loaded target for a batch of that concept's rows, restoring the
base weights bitwise afterwards — no second copy of the model on the accelerator.

Layout of a `FinetunedConcepts` folder (and Hub model repo):

    config.json                        format "axbench-finetuned-concepts", method, base model, training config
    concepts.jsonl                     AxBench metadata.jsonl lines; line i = concept index i
    concept_<id>/model.safetensors     that concept's fine-tuned tensors, named as in `model.named_parameters()`
    README.md                          model card (hub_cards/finetuned_card.md)
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from axdata.cards import render_card
from axdata.concepts import Concept, load_concepts, write_concepts_jsonl
from axdata.hashing import content_hash
from axdata.io import atomic_path, atomic_write_json
from axmethods.contract import CONFIG_FILE, ConceptResult, DictionaryError, card_metadata, read_folder_config
from axmethods.models import TargetModel

logger = logging.getLogger(__name__)

FINETUNED_FORMAT = "axbench-finetuned-concepts"
CONCEPTS_FILE, CARD_FILE, WEIGHTS_FILE = "concepts.jsonl", "README.md", "model.safetensors"


def concept_weights_path(root: Path, concept_id: int) -> Path:
    return root / f"concept_{int(concept_id)}" / WEIGHTS_FILE


@dataclass
class FinetunedConcepts(ConceptResult):
    """Per-concept fully fine-tuned weights of one base model, kept on disk (one safetensors file per concept).

    `weight_files[concept_id]` is where that concept's tensors are; right after training they sit in the
    trainer's output folder, `save_pretrained` copies them into the artefact's layout.
    """

    FORMAT: ClassVar[str] = FINETUNED_FORMAT
    KIND: ClassVar[str] = "fine-tuned concepts"
    steers: ClassVar[bool] = True

    concepts: list[Concept]
    weight_files: dict[int, Path]
    base_model: str
    method: str
    base_model_revision: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c.concept_id for c in self.concepts if c.concept_id not in self.weight_files]
        if missing:
            raise DictionaryError(f"the {self.method} fine-tuned concepts have no weights for concepts {missing[:10]}; "
                                  "every concept needs its concept_<id>/model.safetensors.")

    @property
    def config_hash(self) -> str:
        return content_hash({"format": FINETUNED_FORMAT, "config": self.config})

    def weights(self, concept_id: int) -> dict[str, torch.Tensor]:
        """Concept `concept_id`'s fine-tuned tensors (CPU), by parameter name."""
        path = self.weight_files.get(int(concept_id))
        if path is None:
            raise DictionaryError(f"the {self.method} fine-tuned concepts have no concept {concept_id}; they hold "
                                  f"{self.concept_ids[:10]}…")
        try:
            return load_file(str(path))
        except (OSError, RuntimeError) as error:
            raise DictionaryError(f"cannot read {path} ({error}); the folder is damaged: re-train or re-download "
                                  "it.") from None

    def steerer(self, *, kind: str = "addition", positions: str = "all") -> FinetunedSteerer:
        return FinetunedSteerer(self)

    def write_files(self, root: Path) -> Path:
        """The folder's files, atomically one by one (weights copied from where training left them)."""
        saved: dict[int, Path] = {}
        for concept in self.concepts:
            source, destination = self.weight_files[concept.concept_id], concept_weights_path(root, concept.concept_id)
            if source.resolve() != destination.resolve():
                with atomic_path(destination) as tmp:
                    shutil.copyfile(source, tmp)
            saved[concept.concept_id] = destination
        write_concepts_jsonl(root / CONCEPTS_FILE, self.concepts)
        atomic_write_json(root / CONFIG_FILE, {
            "format": FINETUNED_FORMAT, "format_version": 1, "method": self.method, "base_model": self.base_model,
            "base_model_revision": self.base_model_revision, "config": self.config, "config_hash": self.config_hash})
        self.weight_files = saved
        return root

    @classmethod
    def load(cls, directory: str | Path) -> FinetunedConcepts:
        root = Path(directory)
        record = read_folder_config(root, FINETUNED_FORMAT, "FinetunedConcepts.save_pretrained (axbench train sft)")
        concepts = load_concepts(root / CONCEPTS_FILE)
        files = {c.concept_id: concept_weights_path(root, c.concept_id) for c in concepts}
        absent = [str(path) for path in files.values() if not path.is_file()]
        if absent:
            raise DictionaryError(f"{root} lacks {absent[:3]}; the folder is incomplete: re-save or re-download it.")
        return cls(concepts=concepts, weight_files=files, base_model=record["base_model"], method=record["method"],
                   base_model_revision=record.get("base_model_revision"), config=record.get("config", {}))

    def model_card(self, *, datasets: Sequence[str] = (), eval_results: Sequence[Mapping[str, Any]] = (),
                   repo_id: str | None = None) -> str:
        metadata = card_metadata(self, datasets, eval_results, repo_id, tags=["sft"])
        first = self.concept_ids[0]
        with safe_open(str(self.weight_files[first]), framework="pt") as handle:
            n_tensors = len(list(handle.keys()))
        return render_card("finetuned_card.md", metadata=metadata, finetuned=self, repo_id=repo_id or "DIR_OR_REPO",
                           datasets=list(datasets), examples=self.concepts[:10], n_tensors=n_tensors)


@contextmanager
def swapped_weights(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str = "the weights"
                    ) -> Iterator[None]:
    """Inside the block `model`'s parameters named in `tensors` hold those values; on exit (also on an exception)
    the originals are copied back, bitwise. Originals wait on the CPU so the accelerator holds one model."""
    parameters = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in parameters:
            raise DictionaryError(f"{source} name a tensor {name!r} the model does not have; they were fine-tuned "
                                  "from another architecture.")
        if parameters[name].shape != tensor.shape:
            raise DictionaryError(f"{source}: {name!r} has shape {tuple(tensor.shape)}, the model's "
                                  f"{tuple(parameters[name].shape)}; they were fine-tuned from another model size.")
    originals = {name: parameters[name].detach().to("cpu", copy=True) for name in tensors}
    try:
        with torch.no_grad():
            for name, tensor in tensors.items():
                parameters[name].copy_(tensor)
        yield
    finally:
        with torch.no_grad():
            for name, original in originals.items():
                parameters[name].copy_(original)


@dataclass
class FinetunedSteerer:
    """Steering inference with `FinetunedConcepts` (the `Steerer` protocol of `axmethods.contract`).

    Every batch must hold one concept (`batch_by_concept` tells `run_steering` so): its weights are swapped
    into the model for the batch. The factor does not apply (one sample per prompt).
    """

    finetuned: FinetunedConcepts
    factor_free: bool = True
    batch_by_concept: bool = True
    _cached: tuple[int, dict[str, torch.Tensor]] | None = field(default=None, init=False, repr=False)

    @property
    def method(self) -> str:
        return self.finetuned.method

    @property
    def factors(self) -> list[float]:
        return self.finetuned.steering_factors

    def provenance(self) -> dict[str, Any]:
        return {"finetuned_config_hash": self.finetuned.config_hash, "steering": "finetuned-weights"}

    def instructions(self, prompts: pd.DataFrame) -> list[str]:
        return prompts["original_prompt"].tolist()

    def intervene(self, target: TargetModel, rows: pd.DataFrame) -> tuple[AbstractContextManager[Any], np.ndarray]:
        concept_ids = sorted({int(c) for c in rows["concept_id"]})
        if len(concept_ids) != 1:
            raise ValueError(f"a {self.method} batch must hold one concept's rows (each swaps in its own weights) but "
                             f"holds concepts {concept_ids[:10]}; run it through run_steering, which batches by concept "
                             "for steerers with batch_by_concept = True.")
        (concept_id,) = concept_ids
        # Batches arrive grouped by concept: keep the last concept's tensors instead of re-reading the file.
        if self._cached is None or self._cached[0] != concept_id:
            self.finetuned.check_model(target)
            self._cached = (concept_id, self.finetuned.weights(concept_id))
        source = f"the {self.method} weights of concept {concept_id}"
        return swapped_weights(target.model, self._cached[1], source=source), np.full(len(rows), np.nan)
